"""The small values every layer shares, at the bottom of the house (imports nothing of ours).

* :class:`Params` — the model's parameters.
* :class:`LossSpec` — what the loss *means*: label kind, ignored label, which optional terms are
  present, the reduction. Frozen and hashable: a static ``jit`` argument.
* :class:`Plan` — how the loss *runs*: row and class chunk sizes, the mesh and its axes. Frozen
  and hashable too; it never changes a result beyond floating-point rounding.
* :class:`Want` — which outputs a pass over the data must produce (static).
* :class:`Evaluation` — what the engine returns.

Shape names used in annotations across the package: ``N`` samples (rows), ``D`` features,
``K`` classes. See ``docs/derivation.md`` for the mathematics.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

REDUCTIONS = ("mean", "sum", "none")

# Annotation aliases, read as: a float array of shape (N, D), an integer array of shape (N,), ...
Features = Float[Array, "N D"]
Weights = Float[Array, "D K"]
Bias = Float[Array, " K"]
Labels = Int[Array, " N"] | Float[Array, "N K"]
RowValues = Float[Array, " N"]
Scores = Float[Array, "N K"]


class Params(NamedTuple):
    """Model parameters: weights ``W`` (D, K) and an optional bias ``b`` (K,)."""

    W: jax.Array
    b: jax.Array | None = None


Params.W.__doc__ = "Weights of shape (D, K); column k scores class k."
Params.b.__doc__ = "Bias of shape (K,), or None for a model without one (it is not penalised)."


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the loss is. Every field changes the compiled program, so each is static.

    Attributes:
      soft: labels are (N, K) probability rows rather than (N,) class ids.
      ignore_index: class id that marks a row left out of the sum and the count.
      smoothing: a label-smoothing term ε is present (non-zero, or traced).
      z_loss: a z-loss term ζ·lse² is present (non-zero, or traced).
      reduction: "mean" (weighted mean over counted rows), "sum", or "none" (per row).
      softcap: c > 0 caps the scores at z ← c·tanh(z/c) before the softmax (Gemma 2's logit
        soft-cap), or None. A model constant, so static.
    """

    soft: bool
    ignore_index: int = -100
    smoothing: bool = False
    z_loss: bool = False
    reduction: str = "mean"
    softcap: float | None = None

    def __post_init__(self):
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {', '.join(map(repr, REDUCTIONS))}; "
                             f"got {self.reduction!r}.")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the loss runs on the data one device holds. Static.

    Attributes:
      chunk_rows: rows of scores live at a time.
      class_chunk: classes per block (online log-sum-exp), or None for all K at once.
      feature_blocks: the product Xᵀ·dZ of a chunk is formed in this many blocks of features
        (rows of dW), so that its temporary is D/feature_blocks × K rather than D × K.
      mesh: a ``jax.sharding.Mesh`` with Auto axes, or None on one device.
      data_axis: mesh axis the rows are split over. class_axis: axis W's columns are split over.
      weight_grad_dtype: dtype name dW accumulates in over row chunks; None: the accumulation
        dtype (float32 for 16-bit inputs). A 16-bit accumulator halves the largest buffer of an
        LM head (D×K) at the cost of one rounding per chunk.
      recompute: differentiate a scalar loss by saving the log-sum-exp and recomputing the
        scores in the backward (the cut-cross-entropy form) instead of computing every gradient
        in the forward pass (the Liger form); "none" reductions always recompute.
    """

    chunk_rows: int
    class_chunk: int | None = None
    feature_blocks: int = 1
    mesh: jax.sharding.Mesh | None = None
    data_axis: str | None = None
    class_axis: str | None = None
    weight_grad_dtype: str | None = None
    recompute: bool = False


class Want(NamedTuple):
    """Which outputs one pass must produce (static)."""

    grad_W: bool = False  # dW, and db when there is a bias
    grad_X: bool = False
    grad_labels: bool = False  # d/d(probability rows)
    rows: bool = False  # per-row loss and log-sum-exp
    predictions: bool = False  # per-row arg-max class id


class Evaluation(NamedTuple):
    """The engine's result: ``value = Σₙ cₙ ℓₙ`` and the requested gradients, in the
    accumulation dtype (float32 for 16-bit inputs)."""

    value: jax.Array  # ()
    gW: jax.Array | None  # (D, K)
    gb: jax.Array | None  # (K,)
    gX: jax.Array | None  # (N, D)
    g_labels: jax.Array | None  # (N, K)
    loss: jax.Array | None  # (N,) unweighted per-row losses
    lse: jax.Array | None  # (N,) per-row log-sum-exp
    predicted: jax.Array | None = None  # (N,) int32 arg-max class per row


def accumulation_dtype(dtype) -> jnp.dtype:
    """float32 for 16-bit inputs (bf16/f16 accumulate in f32), otherwise the dtype itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype
