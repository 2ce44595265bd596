r"""What X is, for the engine: one protocol that every layout of the features answers.

A *layout* of X (N, D) has ``shape``, ``dtype`` and, if it fixes its own row chunks, a
``chunk_rows`` and ``chunk(start, size)`` returning a *row block*. A row block answers

* ``scores(W)``: :math:`x W`, (rows, K) in the accumulation dtype;
* ``add_transposed_product(gW, dz, feature_blocks)``: :math:`gW + x^\top dz`, (D, K);
* ``squares()``: the block with every value squared, :math:`x \circ x` (a Hessian's diagonal).

The layouts:

* a dense ``jax.Array``: itself one layout and, sliced, its own row blocks (the functions below
  answer for it, since an array cannot carry methods);
* :class:`jsoftmax._inplace.InPlaceRows`: a dense NumPy X read where it lies; its blocks are
  dense arrays;
* :class:`jsoftmax._sparse.SparseRows`: CSR rows; its blocks are
  :class:`jsoftmax._sparse.SparseChunk`, which carry the three methods.

A layout also says ``kind`` (``"dense"`` or ``"sparse"``: what the rules of ``_rules.json`` and refusals
are keyed by) and whether it is ``per_device`` (laid out with a leading axis of row blocks,
one per device of a mesh's data axis, which ``shard_map`` takes as it is). This module is the
engine's only place that tells the layouts apart; what remains elsewhere turns the caller's
input into a layout (``_api.prepare``, ``_validate``) or refuses what a layout cannot do.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jax import lax

from ._types import accumulation_dtype


@runtime_checkable
class RowBlock(Protocol):
    """Rows of a layout that is not a dense array (see the module doc)."""

    shape: tuple[int, int]
    dtype: Any

    def scores(self, W: jax.Array) -> jax.Array: ...

    def add_transposed_product(self, gW: jax.Array, dz: jax.Array, feature_blocks: int) -> jax.Array: ...

    def squares(self) -> RowBlock: ...


@runtime_checkable
class Layout(Protocol):
    """X laid out in fixed chunks of rows (see the module doc)."""

    shape: tuple[int, int]
    dtype: Any
    chunk_rows: int
    kind: str

    def chunk(self, start, size: int) -> RowBlock | jax.Array: ...


def matmul(a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
    """``a @ b``: 16-bit inputs accumulate in float32 (the tensor-core convention); float32 and
    float64 inputs multiply at full precision. (XLA on a GPU otherwise rounds float32 operands
    to TF32, a ~1e-3 relative error in the gradient: float32 fits on an H200 then never reached
    a tolerance of 1e-6.) ``out_dtype``: a 16-bit result (the GEMM still accumulates in f32
    inside and rounds once when it writes)."""
    accumulate = accumulation_dtype(a.dtype)
    if accumulate != a.dtype and jax.default_backend() == "cpu":
        # A CPU has no 16-bit matrix units, and XLA's CPU runtime has no batched (vmap-ed)
        # 16-bit × 16-bit → float32 product: the operands are widened here, one chunk at a time
        # (exactly: a product of two 16-bit floats fits float32's mantissa).
        out = jnp.matmul(a.astype(accumulate), b.astype(accumulate), precision=lax.Precision.HIGHEST)
        return out if out_dtype is None else out.astype(out_dtype)
    precision = lax.Precision.HIGHEST if accumulate == a.dtype else lax.Precision.DEFAULT
    return jnp.matmul(a, b, preferred_element_type=out_dtype or accumulate, precision=precision)


def kind(X) -> str:
    """``"sparse"`` or ``"dense"``: which rules (``_rules.json``) and refusals apply to ``X``."""
    return getattr(X, "kind", "dense")


def chunked(X) -> bool:
    """X fixes its own row chunks (a plan made afterwards cannot change them)."""
    return hasattr(X, "chunk")


def per_device(X) -> bool:
    """X is laid out per device already (a leading axis of row blocks): ``shard_map`` takes it
    as it is, and each device reads its block through ``X.local()``."""
    return getattr(X, "per_device", False)


def row_block(X, start, size: int):
    """Rows ``[start, start + size)`` of X: a dense slice, or a chunked layout's chunk."""
    if chunked(X):
        return X.chunk(start, size)
    return X if (size == X.shape[0] and isinstance(start, int)) else lax.dynamic_slice_in_dim(X, start, size, axis=0)


def over_row_blocks(X, body, carry, rows: int | None = None):
    """``carry = body(carry, start, block)`` over the row blocks of X, in order: blocks of
    ``rows`` rows (default: a chunked X's own ``chunk_rows``; a dense X unchunked is one block);
    the last may be short. A layout that asks to ``prefetch`` (X in host memory) is read one
    block ahead: the loop carries block i + 1, fetched before block i's ``body`` and independent
    of it, so that its transfer overlaps the compute (``_host``)."""
    n = X.shape[0]
    c = min(n, rows or (X.chunk_rows if chunked(X) else n))
    if c >= n:
        return body(carry, 0, row_block(X, 0, n))
    n_full, rem = divmod(n, c)
    if getattr(X, "prefetch", False) and n_full > 1:
        def step(i, state):
            carry, block = state
            following = X.chunk((i + 1) * c, c)
            return body(carry, i * c, block), following

        carry, block = lax.fori_loop(0, n_full - 1, step, (carry, X.chunk(0, c)))
        carry = body(carry, (n_full - 1) * c, block)
    else:
        carry = lax.fori_loop(0, n_full, lambda i, carry: body(carry, i * c, row_block(X, i * c, c)), carry)
    return body(carry, n_full * c, row_block(X, n_full * c, rem)) if rem else carry


def nonfinite_marker(x) -> jax.Array:
    """Σ 0·x over X or a block, in the accumulation dtype: exactly 0 when every value is finite,
    NaN when any is NaN or ±inf (0·inf is NaN). One fused pass with no N×D mask. Not max|x|:
    XLA on a CPU dropped a NaN from max|X| of a 5,000 × 300 float64 X (its vectorised max
    keeps the other operand), while a sum that meets a NaN stays NaN."""
    if hasattr(x, "nonfinite_marker"):
        return x.nonfinite_marker()
    return jnp.sum(x * 0, dtype=accumulation_dtype(x.dtype))


def scores(x, W: jax.Array) -> jax.Array:
    """x W for a row block ``x`` (rows, D), (rows, K) in the accumulation dtype."""
    return x.scores(W) if hasattr(x, "scores") else matmul(x, W)


def squares(x):
    """The row block with every value squared, x∘x (the same pattern for sparse rows)."""
    return x.squares() if hasattr(x, "squares") else jnp.square(x)


def add_transposed_product(gW: jax.Array, x, dz: jax.Array, feature_blocks: int) -> jax.Array:
    """gW + xᵀ·dz for a row block ``x`` (rows, D) and dz (rows, K), added in place.

    A dense block forms the product in ``feature_blocks`` blocks of rows of gW (features), in a
    loop, not unrolled: it orders the products, so only one is alive at a time. A 16-bit ``gW``
    (``Plan.weight_grad_dtype``) gets a 16-bit product, so that the addition folds into the
    GEMM (β = 1) instead of a float32 (D, K) temporary.
    """
    if hasattr(x, "add_transposed_product"):
        return x.add_transposed_product(gW, dz, feature_blocks)
    out = None if gW.dtype == accumulation_dtype(x.dtype) else gW.dtype
    if feature_blocks == 1:
        return gW + matmul(x.T, dz, out)
    d = x.shape[1]
    size = -(-d // feature_blocks)

    def add_block(start, width, gW):
        x_block = lax.dynamic_slice_in_dim(x, start, width, axis=1)
        part = lax.dynamic_slice_in_dim(gW, start, width, axis=0) + matmul(x_block.T, dz, out)
        return lax.dynamic_update_slice_in_dim(gW, part, start, axis=0)

    n_full, rem = divmod(d, size)
    gW = lax.fori_loop(0, n_full, lambda i, gW: add_block(i * size, size, gW), gW)
    return add_block(n_full * size, rem, gW) if rem else gW
