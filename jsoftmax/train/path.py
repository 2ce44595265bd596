r"""Regularization paths: one penalised fit per strength, from λ_max down, warm-started, in one
compiled program (``docs/derivation.md`` §14).

Along a decreasing grid of strengths λ the model minimises the risk + λ(ρ‖W‖₁ + (1 − ρ)/2‖W‖²)
(ρ the ``l1_ratio``): glmnet's path. By default the path starts at λ_max, the smallest strength
at which W = 0 is optimal — in closed form, from the gradient at W = 0 with the intercept
fitted alone: λ_max = max |∇_W f(0, b*)| / ρ — and each fit starts from the previous one's
solution, so the whole path costs a few times one fit. The fits run as a ``lax.scan`` of the
solver inside one jitted program: the path compiles once and never returns to Python between
strengths.
"""

from __future__ import annotations

import dataclasses
import numbers
from functools import partial

import jax
import numpy as np

from .. import _aot, _api
from .._types import Features, Labels, Params, accumulation_dtype
from . import registry
from .fit import _positive_int, check_tol, feature_affine
from .many import fit_one
from .objective import Data, in_dtype, objective


@dataclasses.dataclass(frozen=True)
class PathResult:
    """What :func:`regularization_path` returns: everything along the path's L strengths.

    Attributes:
      strengths: (L,) λ, decreasing; the L1 strength is ρλ and the L2 strength (1 − ρ)λ.
      l1_ratio: ρ.
      lambda_max: the smallest λ at which W = 0 is optimal (where the default grid starts);
        None when ρ = 0 (no strength makes W = 0 optimal).
      params: ``Params`` with W (L, D, K) and b (L, K) or None.
      support: (L,) how many entries of W are non-zero (exactly: OWL-QN's zeros are 0.0).
      objective: (L,) each fit's penalised objective.
      kkt_violation: (L,) each fit's largest pseudo-gradient entry (§14).
      converged: (L,) ``kkt_violation <= tol``.
      n_iter: (L,) iterations of each fit (each warm-started from the previous one).
    """

    strengths: np.ndarray
    l1_ratio: float
    lambda_max: float | None
    params: Params
    support: np.ndarray
    objective: np.ndarray
    kkt_violation: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray

    def Cs(self, total_weight: float) -> np.ndarray:
        """scikit-learn's C of each strength, C = 1/(λ·Σs): ``total_weight`` is Σs (N unweighted)."""
        return 1.0 / (self.strengths * total_weight)


@partial(jax.jit, static_argnames=("solver", "spec", "plan", "max_iter", "segment_statics"))
def _path_jit(start, data, strengths, l1_ratio, tol, *, solver, spec, plan, max_iter, segment_statics):
    def one(params, strength):
        here = data._replace(l2=(1 - l1_ratio) * strength, l1=l1_ratio * strength)
        fitted, n_iter, kkt, value = fit_one(params, here, tol, solver=solver, spec=spec, plan=plan,
                                             max_iter=max_iter, segment_statics=segment_statics)
        return fitted, (fitted, n_iter, kkt, value)

    return jax.lax.scan(one, start, strengths)[1]


@partial(jax.jit, static_argnames=("spec", "plan"))
def _gradient_at(params, data, *, spec, plan):
    return jax.grad(objective(data, spec, plan))(params)


def _intercept_alone(labels, weights, k: int, smoothing: float, dtype) -> np.ndarray:
    """b* minimising the risk at W = 0: softmax(b*) is the weighted mean target (smoothed), so
    b* = its log (a class without weight: the dtype's most negative finite log)."""
    labels, weights = np.asarray(labels), np.asarray(weights, np.float64)
    if labels.ndim == 1:
        counted = (labels >= 0) & (labels < k)
        mean = np.bincount(labels[counted], weights=weights[counted], minlength=k) / weights[counted].sum()
    else:
        mean = weights @ np.asarray(labels, np.float64) / weights.sum()
    mean = (1 - smoothing) * mean + smoothing / k
    return np.log(np.maximum(mean, np.finfo(dtype).tiny)).astype(dtype)


def regularization_path(
    params: Params,
    X: Features,
    labels: Labels,
    *,
    l1_ratio: float = 1.0,
    strengths=None,
    n_strengths: int = 20,
    min_ratio: float = 1e-3,
    sample_weight=None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    tol: float = 1e-6,
    max_iter: int = 1000,
    feature_mean=None,
    feature_scale=None,
) -> PathResult:
    r"""Fit the elastic net along a path of strengths, warm-started, in one compiled program.

    Model l minimises the risk (:func:`jsoftmax.risk`) + λₗ(ρ‖W‖₁ + (1 − ρ)/2‖W‖²_F), the
    intercept unpenalised, with OWL-QN (``jsoftmax/train/owlqn.py``) to a KKT violation of
    ``tol``, starting from the solution at λₗ₋₁.

    Args:
      params: the start of the first fit: W (D, K) and b (K,) or None (no intercept); K is
        the number of classes. A W of zeros starts from the null model (W = 0 and the
        intercept fitted alone), the optimum at λ_max.
      X, labels, sample_weight, label_smoothing, ignore_index: as in :func:`jsoftmax.fit`.
      l1_ratio: ρ ∈ [0, 1] (1: the lasso; 0: ridge, which needs ``strengths``).
      strengths: the λ grid, decreasing; default ``n_strengths`` values spaced geometrically
        from λ_max down to ``min_ratio``·λ_max.
      tol, max_iter: per fit, as in :func:`jsoftmax.fit`.
      feature_mean, feature_scale: fit as on (X − mean)/scale (see :func:`jsoftmax.fit`).

    Returns:
      A :class:`PathResult`.

    Example:
      >>> import numpy as np, jsoftmax
      >>> from sklearn.datasets import load_wine
      >>> X, y = load_wine(return_X_y=True)
      >>> X = (X - X.mean(0)) / X.std(0)
      >>> start = jsoftmax.Params(np.zeros((13, 3), np.float32), np.zeros(3, np.float32))
      >>> path = jsoftmax.regularization_path(start, X.astype(np.float32), y, n_strengths=5, tol=1e-4)
      >>> # from W = 0 at λ_max (no iteration needed) to a denser model, every fit converged
      >>> int(path.support[0]), int(path.n_iter[0]), bool(path.support[-1] > 10), bool(path.converged.all())
      (0, 0, True, True)
    """
    if not isinstance(l1_ratio, numbers.Real) or isinstance(l1_ratio, bool) or not 0 <= l1_ratio <= 1:
        raise ValueError(f"`l1_ratio` must be a number in [0, 1]; got {l1_ratio!r}.")
    tol, max_iter = check_tol(tol), _positive_int(max_iter, "max_iter")
    if not isinstance(params, Params):
        raise TypeError(f"`params` must be jsoftmax.Params(W, b) (b None for no intercept); got {type(params).__name__}.")
    problem, spec, plan = _api.prepare(params, X, labels, sample_weight=sample_weight, label_smoothing=label_smoothing,
                                       ignore_index=ignore_index, in_place=True)
    acc = accumulation_dtype(problem.W.dtype)
    n, k = problem.X.shape[0], problem.W.shape[1]
    weights = np.ones(n, acc) if problem.sample_weight is None else np.asarray(problem.sample_weight, acc)
    data = Data(problem.X, problem.labels, weights, 0.0, label_smoothing,
                feature_affine(feature_mean, feature_scale, problem.X), 0.0)
    start = jax.tree_util.tree_map(lambda a: np.asarray(a, acc), Params(problem.W, problem.b))
    null = Params(np.zeros_like(start.W), None if start.b is None else
                  _intercept_alone(problem.labels, weights, k, label_smoothing, acc))
    if not np.any(start.W):  # a path from W = 0 starts at the null model: at λ_max it is the optimum
        start = null
    top = None
    if l1_ratio > 0:
        gradient = _aot.call(_gradient_at, (null, data), dict(spec=spec, plan=plan))
        top = float(np.max(np.abs(np.asarray(gradient.W, np.float64)))) / l1_ratio
    if strengths is None:
        if top is None:
            raise ValueError("with l1_ratio=0 no strength makes W = 0 optimal (there is no λ_max): give `strengths`.")
        n_strengths = _positive_int(n_strengths, "n_strengths")
        if not (isinstance(min_ratio, numbers.Real) and 0 < min_ratio < 1):
            raise ValueError(f"`min_ratio` must lie in (0, 1); got {min_ratio!r}.")
        strengths = top * np.geomspace(1.0, min_ratio, n_strengths)
    strengths = np.asarray(strengths, np.float64)
    if strengths.ndim != 1 or strengths.size == 0 or not np.all(np.isfinite(strengths)) or np.any(strengths <= 0):
        raise ValueError(f"`strengths` must be a non-empty 1-D grid of positive finite numbers; got {strengths!r}.")
    if np.any(np.diff(strengths) >= 0):
        raise ValueError("`strengths` must decrease strictly (a path runs from strong to weak penalties, each fit "
                         f"warm-started from the previous); got {strengths.tolist()}.")
    chosen = registry.get(registry.with_l1()[0])
    shapes = Params(jax.ShapeDtypeStruct(start.W.shape, start.W.dtype),
                    None if start.b is None else jax.ShapeDtypeStruct(start.b.shape, start.b.dtype))
    segment_statics = tuple(sorted(chosen.statics(shapes)[1].items()))
    fitted, n_iter, kkt, value = _aot.call(_path_jit, (start, data, np.asarray(strengths, acc), np.asarray(l1_ratio, acc),
                                                       np.asarray(tol, acc)),
                                           dict(solver=chosen.name, spec=spec, plan=plan, max_iter=max_iter,
                                                segment_statics=segment_statics))
    fitted = in_dtype(fitted, problem.W.dtype)
    W = np.asarray(fitted.W)
    kkt = np.asarray(kkt, np.float64)
    return PathResult(strengths, float(l1_ratio), top, fitted, np.count_nonzero(W.reshape(len(strengths), -1), axis=1),
                      np.asarray(value, np.float64), kkt, kkt <= tol, np.asarray(n_iter))
