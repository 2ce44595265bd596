"""``fit_many``: M models on one X — an L2 grid × row masks, e.g. a C × fold search — as one
``vmap`` of a registry solver in one compiled program; given L rows of strengths, a ``scan`` of
it along them, each row warm-started from the one before (a whole search path)."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import numpy as np

from .. import _aot, _api, _validate
from .._types import Features, Labels, Params, Weights, accumulation_dtype
from . import registry
from .fit import _positive_int, check_tol
from .objective import Affine, Data, half_precision_start, in_dtype, inf_norm


@dataclasses.dataclass(frozen=True)
class ManyResult:
    """What :func:`fit_many` returns: everything with a leading axis of M models."""

    params: Params | jax.Array  # W (M, D, K), b (M, K) or None; (L, M, ...) along a path
    n_iter: np.ndarray  # (M,) iterations each model took ((L, M) along a path)
    grad_norm: np.ndarray  # (M,) largest gradient entry at each model's result
    converged: np.ndarray  # (M,) grad_norm <= tol
    value: np.ndarray  # (M,) each model's risk (its own weights and l2)


def fit_one(p, data: Data, tol, *, solver, spec, plan, max_iter, segment_statics):
    """One model's whole fit, traced (under ``vmap`` in ``fit_many``, a ``scan`` along a path):
    (params, iterations, max|grad| — the KKT violation with an L1 penalty —, objective)."""
    chosen = registry.get(solver)
    carry = chosen.start(p, data, spec=spec, plan=plan, max_iter=max_iter)
    carry = chosen.segment(carry, max_iter, tol, data, spec=spec, plan=plan, **dict(segment_statics))
    return carry.params, carry.iteration, inf_norm(carry.grad), carry.value


@partial(jax.jit, static_argnames=("solver", "spec", "plan", "max_iter", "segment_statics"))
def _fit_many_jit(params, X, labels, weights, l2s, l1s, smoothing, means, inv_scales, tol, *, solver,
                  spec, plan, max_iter, segment_statics):
    def one(p, w, l2, l1, mean, inv_scale):
        data = Data(X, labels, w, l2, smoothing, None if mean is None else Affine(mean, inv_scale), l1)
        return fit_one(p, data, tol, solver=solver, spec=spec, plan=plan, max_iter=max_iter,
                       segment_statics=segment_statics)

    axes = (0, 0, 0, 0, None if means is None else 0, None if inv_scales is None else 0)
    models = jax.vmap(one, in_axes=axes)
    if l2s.ndim == 1:
        return models(params, weights, l2s, l1s, means, inv_scales)

    def along(start, strengths):  # one row of the path, warm-started from the previous row's fits
        out = models(start, weights, *strengths, means, inv_scales)
        return out[0], out

    return jax.lax.scan(along, params, (l2s, l1s))[1]


def fit_many(
    params: Params | Weights,
    X: Features,
    labels: Labels,
    *,
    sample_weights: jax.Array,
    l2: jax.Array,
    l1: jax.Array | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    solver: str | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    feature_means: jax.Array | None = None,
    feature_scales: jax.Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | None = None,
) -> ManyResult:
    r"""Fit M independent models on the same X at once, in one compiled program.

    Model m minimises :func:`jsoftmax.risk` with ``sample_weight=sample_weights[m]`` and
    ``l2=l2[m]`` — a grid of L2 strengths × row masks, e.g. the folds of a cross-validation as
    0/1 weights (no copy of X per fold). The models run as one ``vmap`` of the full-batch
    solver: their scores come from one product of X with the stacked weights, each model stops
    changing once its own gradient reaches ``tol``, and the loop ends when all have.

    Args:
      params: starting points with a leading model axis: ``Params`` with W (M, D, K) and b
        (M, K) or None, or a bare W (M, D, K) (warm starts along a path of C values).
      X, labels, label_smoothing, ignore_index: shared by all models, as in :func:`risk`.
      sample_weights: (M, N) non-negative row weights per model (0 leaves a row out; a model
        whose rows all weigh 0 has the penalty alone for objective).
      l2: (M,) L2 strength per model; or (L, M), a path: row l's models start from row
        l − 1's solutions (row 0 from ``params``), all L rows in the same program, and every
        result gains a leading axis of L (e.g. the Cs of a search, each warm-started from the
        previous C, as :class:`jsoftmax.SoftmaxRegressionCV` fits them).
      l1: L1 strengths of ``l2``'s shape (optional; the elastic net with ``l2``), as in
        :func:`fit`: then ``grad_norm`` is each model's KKT violation.
      solver: a full-batch solver ("lbfgs", "newton-cg", "owlqn"); default "lbfgs", or
        "owlqn" when some ``l1`` is positive. tol, max_iter: per model, as in :func:`fit`.
      feature_means, feature_scales: (M, D) each, optional: per-model standardisation folded
        into the weights (see :func:`fit`), e.g. statistics of each fold's training rows.
      mesh, data_axis: split the rows over the ``data_axis`` of a ``jax.sharding.Mesh``, as
        :func:`fit` does (every model's gradient is summed across its devices).

    Returns:
      A :class:`ManyResult`.
    """
    W = params.W if isinstance(params, Params) else params
    b = params.b if isinstance(params, Params) else None
    W = _validate.as_array(W, "params.W")
    if W.ndim != 3:
        raise ValueError(f"`params.W` must be (M, D, K), one (D, K) per model; got shape {W.shape}.")
    m = W.shape[0]
    sample_weights = _validate.as_array(sample_weights, "sample_weights")
    l2 = _validate.as_array(l2, "l2")
    if sample_weights.ndim != 2 or sample_weights.shape[0] != m:
        raise ValueError(f"`sample_weights` must be (M, N) with M = {m} models; got shape {sample_weights.shape}.")
    if l2.ndim not in (1, 2) or l2.shape[-1] != m or l2.shape[0] == 0:
        raise ValueError(f"`l2` must have shape (M,) = ({m},), or (L, M) = (L, {m}) for a path; got {l2.shape}.")
    weights_np, l2_np = np.asarray(sample_weights, np.float64), np.asarray(l2, np.float64)
    if not np.all(np.isfinite(l2_np)) or np.any(l2_np < 0):
        raise ValueError(f"`l2` must be finite and non-negative; got {l2_np.tolist()[:10]}.")
    if not np.all(np.isfinite(weights_np)) or np.any(weights_np < 0):
        raise ValueError("`sample_weights` must be finite and non-negative.")
    l1 = np.zeros(l2.shape) if l1 is None else np.asarray(_validate.as_array(l1, "l1"), np.float64)
    if l1.shape != l2.shape or not np.all(np.isfinite(l1)) or np.any(l1 < 0):
        raise ValueError(f"`l1` must have `l2`'s shape {tuple(l2.shape)}, finite and non-negative; "
                         f"got shape {l1.shape}.")
    capable = registry.with_l1()
    chosen = registry.get(solver or (capable[0] if np.any(l1 > 0) else registry.DEFAULT))
    if np.any(l1 > 0) and not chosen.l1:
        raise ValueError(f"solver={chosen.name!r} does not handle an L1 penalty; use one of "
                         f"{', '.join(map(repr, capable))}.")
    max_iter = _positive_int(max_iter, "max_iter")
    tol = check_tol(tol)
    # The first model validates the shared inputs; sliced on the host (no eager JAX program).
    first = Params(np.asarray(W)[0],
                   None if b is None else np.asarray(b)[0])
    first, _ = half_precision_start(first, X)  # a 16-bit X with wider params: checked as X's dtype
    problem, spec, plan = _api.prepare(first, X, labels, sample_weight=np.asarray(sample_weights)[0], l2=0.0,
                                       label_smoothing=label_smoothing, ignore_index=ignore_index,
                                       in_place=mesh is None, require_counted=False, mesh=mesh,
                                       data_axis=data_axis)
    if b is not None and b.shape != (m, W.shape[2]):
        raise ValueError(f"`params.b` must be (M, K) = ({m}, {W.shape[2]}); got {b.shape}.")
    means = scales = None
    if feature_means is not None or feature_scales is not None:
        d = problem.X.shape[1]
        means = np.zeros((m, d)) if feature_means is None else np.asarray(feature_means, np.float64)
        scales = np.ones((m, d)) if feature_scales is None else np.asarray(feature_scales, np.float64)
        if means.shape != (m, d) or scales.shape != (m, d) or not np.all(np.isfinite(means)) \
                or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise ValueError(f"`feature_means`/`feature_scales` must be ({m}, {d}) finite, scales positive.")
        acc = accumulation_dtype(problem.X.dtype)
        means, scales = np.asarray(means, acc), np.asarray(1.0 / scales, acc)
    if not _api.fixed_chunks(problem.X):  # (a sparse X is laid out by its plan already)
        # Under vmap the M models' scores of a chunk are live together, as one (rows, M·K) block:
        # plan the chunk for M·K classes. Planned for K, the models ran well above the stacked
        # products' floor (the (rows, M, K) ↔ (M, rows, K) relayouts left the cache); for M·K,
        # at it (`benchmarks/results/search-chunks-cpu.md`).
        plan = _api.plan_rows(plan, problem.X.shape[0], problem.X.shape[1], W.shape[2],
                              np.dtype(problem.X.dtype).itemsize, classes=W.shape[2] * m)
    acc = accumulation_dtype(problem.W.dtype)
    # NumPy inputs (no eager JAX conversions to compile); the program itself comes from _aot.
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, acc), Params(W, b))
    weights = np.asarray(sample_weights, problem.X.dtype)
    if plan.mesh is not None:  # each model's row weights split like the rows
        weights = jax.device_put(weights, jax.sharding.NamedSharding(
            plan.mesh, jax.sharding.PartitionSpec(None, data_axis)))
    shapes = Params(jax.ShapeDtypeStruct(W.shape[1:], W.dtype),
                    None if b is None else jax.ShapeDtypeStruct(b.shape[1:], b.dtype))
    segment_statics = tuple(sorted(chosen.statics(shapes)[1].items()))
    fitted, n_iter, grad_norm, value = _aot.call(_fit_many_jit, (
        start, problem.X, problem.labels, weights, np.asarray(l2, acc), np.asarray(l1, acc), label_smoothing, means, scales,
        np.asarray(tol, acc)), dict(solver=chosen.name, spec=spec, plan=plan, max_iter=max_iter,
                                    segment_statics=segment_statics))
    fitted = in_dtype(fitted, W.dtype)
    grad_norm = np.asarray(grad_norm, np.float64)
    return ManyResult(fitted if isinstance(params, Params) else fitted.W, np.asarray(n_iter),
                      grad_norm, grad_norm <= tol, np.asarray(value, np.float64))
