r"""The risk as a solver sees it, and the records every solver and driver share.

* :class:`Data` — what one fit minimises over: X, labels, weights, the L2 strength, label
  smoothing and an optional standardisation (:class:`Affine`), as named fields.
* :class:`Carry` — a full-batch loop's state: iteration, params, the solver's own state, value,
  gradient and the loss history. Every solver's compiled segment takes and returns one, so the
  drivers (callbacks, checkpoints) work for any solver unchanged.
* :func:`objective` — the risk (``_api.objective``: the custom VJP, so every gradient is the
  analytic one) as a function of the params, with standardisation folded into the weights
  (``docs/derivation.md`` §9) and 16-bit data trained with float32 master params.
* :func:`first_carry` and :func:`iterate` — a solver's start and its compiled
  ``lax.while_loop`` until ``it == limit``, ``max|grad| <= tol`` or the state says ``stalled``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _api
from .._types import LossSpec, Params, Plan


class Affine(NamedTuple):
    """Features standardised as (X − mean)·inv_scale, folded into the weights (never formed)."""

    mean: jax.Array  # (D,)
    inv_scale: jax.Array  # (D,)


class Data(NamedTuple):
    """What a fit minimises over (leaves are traced; None where absent)."""

    X: Any  # (N, D) dense, or a layout (_inplace.InPlaceRows, _sparse.SparseRows)
    labels: jax.Array  # (N,) ids or (N, K) rows
    sample_weight: jax.Array | None  # (N,)
    l2: Any  # λ
    smoothing: Any  # ε
    affine: Affine | None
    l1: Any = 0.0  # λ₁ on W (the intercept is never penalised); only solvers with ``l1`` read it


class Carry(NamedTuple):
    """A full-batch loop's state between segments (checkpointed without ``losses``)."""

    iteration: jax.Array
    params: Params
    state: Any  # the solver's own (a NamedTuple with ``stalled``, or optax's state)
    value: jax.Array
    grad: Params
    losses: jax.Array | None  # (max_iter + 1,) the value after each iteration, NaN beyond


def tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_axpy(alpha, x, y):
    """alpha·x + y, leaf by leaf."""
    return jax.tree_util.tree_map(lambda u, v: alpha * u + v, x, y)


def inf_norm(tree) -> jax.Array:
    """max |x| over the leaves; NaN when any value is NaN (a diverged step must not read as
    small: XLA on a CPU can drop a NaN from a max, so Σ 0·x, NaN exactly then, is added)."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) + jnp.sum(leaf * 0)
                              for leaf in jax.tree_util.tree_leaves(tree)]))


def half_precision_start(params, X) -> tuple[Any, Params | None]:
    """(params to validate, the start to keep) for a 16-bit X (features stored in bfloat16 or
    float16) with float32 or float64 params: the params are checked as X's dtype, but the fit
    starts from them as given and returns them in their own dtype. X itself is never widened:
    the products read it as stored and accumulate in float32 (``_engine.matmul``), and the
    solver's state is float32 (the accumulation dtype of 16-bit data)."""
    x_dtype = getattr(X, "dtype", None)
    leaves = params if isinstance(params, tuple) else (params,)
    w_dtype = getattr(leaves[0], "dtype", None)
    if x_dtype is None or w_dtype is None or np.dtype(x_dtype).itemsize != 2 or np.dtype(x_dtype).kind not in "fV" \
            or np.dtype(w_dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        return params, None
    wide = Params(*[None if a is None else np.asarray(a) for a in (leaves + (None,))[:2]])
    narrow = jax.tree_util.tree_map(lambda a: a.astype(x_dtype), wide)
    return (narrow if isinstance(params, Params) else narrow.W), wide


def in_dtype(params: Params, dtype) -> Params:
    """The (float32 master) params in the data's dtype; a no-op when they already match."""
    return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)


def on_raw_features(params: Params, affine: Affine | None) -> Params:
    r"""Parameters for raw X equal to ``params`` for standardised X:
    :math:`((X-\mu)/\sigma)W + b = X(W/\sigma) + (b - (\mu/\sigma)W)` (linear in the params)."""
    if affine is None:
        return params
    W = params.W * affine.inv_scale[:, None].astype(params.W.dtype)
    shift = (affine.mean * affine.inv_scale).astype(params.W.dtype) @ params.W
    return Params(W, -shift if params.b is None else params.b - shift)


def objective(data: Data, spec: LossSpec, plan: Plan) -> Callable[[Params], jax.Array]:
    """The risk as a function of the params. With ``data.affine`` the params are those of
    standardised features, mapped onto the raw X by :func:`on_raw_features` (autodiff carries
    the gradient back through the map), and the penalty is on the standardised W, as if the
    scaled copy of X existed. 16-bit data is trained with float32 master params (and so float32
    optimizer state): the params are cast to the data's dtype for the risk, and its gradient
    comes back in float32."""

    def risk(params: Params):
        params = in_dtype(params, data.X.dtype)
        if data.affine is None:
            return _api.objective(params, data.X, data.labels, data.sample_weight, data.l2, data.smoothing,
                                  spec, plan)
        value = _api.objective(on_raw_features(params, data.affine), data.X, data.labels, data.sample_weight,
                               0.0, data.smoothing, spec, plan)
        return value + 0.5 * data.l2 * jnp.sum(jnp.square(params.W.astype(value.dtype)))

    return risk


def first_carry(params: Params, data: Data, spec: LossSpec, plan: Plan, max_iter: int,
                init_state: Callable) -> Carry:
    """A full-batch loop's first carry; ``init_state(params, grad, value)`` gives the solver's state."""
    value, grad = jax.value_and_grad(objective(data, spec, plan))(params)
    losses = jnp.full((max_iter + 1,), jnp.nan, value.dtype).at[0].set(value)
    return Carry(jnp.asarray(0), params, init_state(params, grad, value), value, grad, losses)


def iterate(carry: Carry, limit, tol, step: Callable) -> Carry:
    """``step(params, state, value, grad)`` until ``iteration == limit``, ``max|grad| <= tol`` (a
    NaN gradient also stops, since NaN > tol is false) or the state says ``stalled``; one
    compiled while_loop that records the loss history."""

    def cond(carry: Carry):
        going = (carry.iteration < limit) & (inf_norm(carry.grad) > tol)
        stalled = getattr(carry.state, "stalled", None)  # optax's states have none
        return going if stalled is None else going & ~stalled

    def body(carry: Carry):
        params, state, value, grad = step(carry.params, carry.state, carry.value, carry.grad)
        return Carry(carry.iteration + 1, params, state, value, grad, carry.losses.at[carry.iteration + 1].set(value))

    return lax.while_loop(cond, body, carry)


class Solver(NamedTuple):
    """A full-batch solver: one file of its own and one line of ``registry.SOLVERS``.

    Attributes:
      name: how users ask for it (``fit(solver=...)``, the estimators' ``solver``).
      start: jitted ``(params, data, *, spec, plan, max_iter, **start_statics) -> Carry``.
      segment: jitted ``(carry, limit, tol, data, *, spec, plan, **segment_statics) -> Carry``:
        iterations until ``limit`` (a traced bound, so callbacks and checkpoints split one
        compiled program into segments).
      statics: ``(params) -> (start_statics, segment_statics)``, its static settings (e.g. CG
        steps per Newton iteration from the params' shapes, an optax transformation).
      sparse_mesh: whether it runs on a sparse X sharded over a mesh.
      l1: whether it minimises an L1 penalty too (``Data.l1``; its carry's ``grad`` is then the
        pseudo-gradient, whose largest entry is the KKT violation).
    """

    name: str
    start: Callable
    segment: Callable
    statics: Callable[[Params], tuple[dict, dict]] = lambda params: ({}, {})
    sparse_mesh: bool = True
    l1: bool = False
