"""``SoftmaxRegressionCV``: an (l1_ratio ×) C × fold search fitted with :func:`jsoftmax.fit_many`.

scikit-learn's ``LogisticRegressionCV`` interface. The folds are row weights over one X (no
copy of X per fold) and are fitted together with every l1_ratio, one ``vmap``-ed solve per C;
the Cs are taken in the given order, each (ratio, fold) model warm-started from its solution at
the previous C — the path that makes scikit-learn's search cheap, kept here — so each solve
needs few iterations. The whole grid is one compiled program (a ``scan`` along the Cs).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np
from sklearn.metrics import accuracy_score, get_scorer, make_scorer
from sklearn.model_selection import check_cv
from sklearn.utils import metadata_routing
from sklearn.utils.metadata_routing import (MetadataRouter, MethodMapping, _raise_for_params,
                                            _routing_enabled, process_routing)
from sklearn.utils.validation import _check_method_params, check_is_fitted

from .._compat import enable_x64
from .._types import Params
from ..io.model_files import public_coefficients
from ..train import fit_many
from . import constraints
from .common import (FULL_BATCH_SOLVERS, SHARED_CONSTRAINTS, SoftmaxClassifier, as_dtype, coefficient_dtype,
                     column_moments, device_mesh, fit_data, is_half_precision, l1_solver, pad_rows, penalty_strengths,
                     training_weights)
from .estimator import SoftmaxRegression

CV_SOLVERS = ("auto", *FULL_BATCH_SOLVERS)  # "auto" and the full-batch solvers fit_many vmaps


# Rows of a fold's test set scored at a time (a copy of at most this much of X).
SCORE_BLOCK_BYTES = 4 * 2**20


def _predict_by_blocks(models: list, X, rows: np.ndarray) -> list[np.ndarray]:
    """Each model's predictions on ``X[rows]``, taken in blocks of rows: the memory of one block
    (not a copy of the whole test set), each row's product computed once per model. A short
    last block is padded to the others' size (its first row repeated, predictions dropped), so
    that every block has one shape: one compiled program."""
    rows = np.asarray(rows)
    n = len(rows)
    step = max(1, SCORE_BLOCK_BYTES // max(1, X.shape[1] * X.dtype.itemsize))
    if n <= step:
        step = n
    parts: list[list[np.ndarray]] = [[] for _ in models]
    for start in range(0, n, step):
        index = rows[start:start + step]
        block = X[np.concatenate([index, np.full(step - len(index), index[0])])]
        for part, model in zip(parts, models):
            part.append(model.predict(block)[:len(index)])
    return [np.concatenate(part) for part in parts]


def _with_labels(scorer, classes: np.ndarray):
    """``scorer`` told every class (``labels=``, and the positive class of a binary problem),
    when its metric takes them: a fold's test rows may lack a class (scikit-learn does the same
    in ``_log_reg_scoring_path``)."""
    function = getattr(scorer, "_score_func", None)
    parameters = inspect.signature(function).parameters if function is not None else {}
    if "labels" not in parameters:
        return scorer
    extra = {"pos_label": classes[-1]} if len(classes) == 2 and "pos_label" in parameters else {}
    return make_scorer(function, greater_is_better=scorer._sign == 1, response_method=scorer._response_method,
                       labels=classes, **extra, **getattr(scorer, "_kwargs", {}))


class SoftmaxRegressionCV(SoftmaxClassifier):
    """Multinomial logistic regression with C (and the elastic net's l1_ratio) chosen by
    cross-validation, every (l1_ratio, C, fold) model fitted in compiled, vmapped solves.

    Args:
      Cs: number of C values on a log grid between 1e-4 and 1e4 (as scikit-learn), or a list;
        ``np.inf`` is no penalty (then the l1_ratios do not matter), as in scikit-learn.
      l1_ratios: None (the L2 penalty alone), or a list of elastic-net mixings ρ ∈ [0, 1] to
        search with the Cs (scikit-learn's ``l1_ratios``; the objective of each is
        :class:`SoftmaxRegression`'s with that ``l1_ratio``). The (ratio, C) pair with the best
        total score over the folds wins — ties to the smaller C, then to the earlier ratio, as
        ``LogisticRegressionCV``.
      cv: folds: an int (stratified k-fold), a splitter, or an iterable of (train, test).
      scoring: a scikit-learn scorer name or callable; default accuracy.
      refit: refit on all the data at the best C (warm-started from the folds' mean), else
        average the folds' coefficients at the best C.
      fit_intercept, class_weight, max_iter, tol, standardize, dtype: as in
        :class:`SoftmaxRegression` (``standardize`` uses each fold's own training statistics).
      devices: as in :class:`SoftmaxRegression`: the folds' fits and the refit split the rows
        over these devices.
      solver: "auto" (default: "lbfgs", jsoftmax's lean L-BFGS, for the L2 penalty; "owlqn"
        when an l1_ratio is positive), "lbfgs", "newton-cg" or "owlqn" (the one that fits an L1
        part; the others refuse ``l1_ratios`` above 0). On the search benchmark the vmapped folds
        were fastest with the lean L-BFGS, then Newton-CG; optax's L-BFGS, whose zoom line
        searches batched over the folds wait for the slowest, was far behind
        (``benchmarks/results/search-cpu.md``).

    Attributes (scikit-learn's, in its layout with ``use_legacy_attributes=True``): ``Cs_``,
    ``C_`` and ``l1_ratio_`` (one per class, all equal: the model is multinomial; one for a
    binary problem), ``l1_ratios_`` (the ratios searched; ``[0.0]`` for ``l1_ratios=None``),
    ``scores_`` and ``coefs_paths_`` (dicts keyed by class — by the positive class alone for a
    binary problem — of (n_folds, n_Cs) scores, the same for every class, and
    (n_folds, n_Cs, n_features [+ 1]) coefficient paths of that class; with ``l1_ratios`` given,
    an l1-ratio axis after the Cs' — (n_folds, n_Cs, n_l1_ratios) and
    (n_folds, n_Cs, n_l1_ratios, n_features [+ 1])), ``n_iter_`` (1, n_folds, n_Cs [,
    n_l1_ratios]), ``coef_``, ``intercept_``, ``classes_``, ``n_features_in_``; and
    ``best_estimator_``, the refitted :class:`SoftmaxRegression`.

    Example:
      >>> from sklearn.datasets import load_wine
      >>> from sklearn.preprocessing import scale
      >>> X, y = load_wine(return_X_y=True)
      >>> search = SoftmaxRegressionCV(Cs=[0.01, 0.1, 1.0], l1_ratios=[0.5, 1.0], cv=3).fit(scale(X), y)
      >>> search.scores_[0].shape  # (folds, Cs, l1_ratios)
      (3, 3, 2)
      >>> bool(search.C_[0] in search.Cs_ and search.l1_ratio_[0] in search.l1_ratios_)
      True
    """

    # ``score`` takes ``sample_weight`` for its scorer, as LogisticRegressionCV's (routing).
    __metadata_request__score = {"sample_weight": metadata_routing.UNUSED}

    def __init__(self, Cs: int | list = 10, *, l1_ratios: list | None = None, cv: Any = None, scoring: Any = None,
                 refit: bool = True, fit_intercept: bool = True, class_weight: dict | str | None = None,
                 max_iter: int = 100, tol: float = 1e-4, solver: str = "auto", standardize: bool = False,
                 dtype: str = "float64", devices: Any = None):
        self.Cs = Cs
        self.l1_ratios = l1_ratios
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.standardize = standardize
        self.dtype = dtype
        self.devices = devices

    _parameter_constraints = {
        "solver": constraints.options(*CV_SOLVERS, message="unknown solver {value!r}; choose one of "
                                      + ", ".join(CV_SOLVERS) + "."),
        "refit": constraints.boolean(),
        **SHARED_CONSTRAINTS,
    }

    def _grid(self) -> np.ndarray:
        Cs = self.Cs
        if isinstance(Cs, numbers.Integral) and not isinstance(Cs, bool):
            if Cs < 1:
                raise ValueError(f"`Cs` must be a positive int or a list of positive numbers; got {Cs}.")
            return np.logspace(-4, 4, int(Cs))
        try:
            grid = np.asarray(Cs, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`Cs` must be a positive int or a list of positive numbers; got {Cs!r}.") from None
        if grid.ndim != 1 or grid.size == 0 or not np.all(grid > 0):  # NaN fails too; np.inf: no penalty
            raise ValueError(f"`Cs` must be a non-empty list of positive numbers (np.inf: no penalty); got {Cs!r}.")
        return grid

    def _ratios(self) -> np.ndarray | None:
        """The l1_ratios grid (None: the L2 penalty alone, no ratio axis in the attributes)."""
        ratios = self.l1_ratios
        if ratios is None:
            return None
        expected = "None or a non-empty list of numbers in [0, 1]"
        if isinstance(ratios, (str, bytes)) or not np.iterable(ratios) or any(
                not isinstance(r, numbers.Real) or isinstance(r, (bool, np.bool_)) for r in ratios):
            raise ValueError(f"`l1_ratios` must be {expected}; got {ratios!r}.")
        grid = np.asarray(list(ratios), np.float64)
        if grid.ndim != 1 or grid.size == 0 or not np.all((grid >= 0) & (grid <= 1)):  # NaN fails too
            raise ValueError(f"`l1_ratios` must be {expected}; got {ratios!r}.")
        return grid

    def _solver(self, ratios: np.ndarray) -> str:
        """The solver of the folds' fits: "auto" is L-BFGS for L2 alone, OWL-QN with an L1 part."""
        if np.any(ratios > 0):
            return l1_solver(self.solver, f"l1_ratios={ratios.tolist()}")
        return "lbfgs" if self.solver == "auto" else self.solver

    def _folds(self, X, y, split_params: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        cv = 5 if self.cv is None else self.cv
        if isinstance(cv, numbers.Integral) and not isinstance(cv, bool) and not 2 <= cv <= len(y):
            raise ValueError(f"`cv`={cv} folds need 2 ≤ cv ≤ the number of samples ({len(y)}).")
        folds = [(np.asarray(train), np.asarray(test)) for train, test in
                 check_cv(cv, y, classifier=True).split(X, y, **split_params)]
        for i, (train, test) in enumerate(folds):
            if len(train) == 0 or len(test) == 0:
                raise ValueError(f"`cv` fold {i} has an empty {'training' if len(train) == 0 else 'test'} set.")
        # A fold whose training rows lack a class is fitted like scikit-learn fits it: over all
        # the classes, the missing ones held back by the penalty alone.
        return folds

    def _get_scorer(self):
        """The scorer of ``scoring`` (accuracy by default), as scikit-learn's."""
        return get_scorer(self.scoring if self.scoring is not None else "accuracy")

    def get_metadata_routing(self):
        """Metadata routing, as ``LogisticRegressionCV``'s: ``fit`` routes to the splitter's
        ``split`` and the scorer's ``score``; ``score`` to the scorer."""
        return (MetadataRouter(owner=self).add_self_request(self)
                .add(splitter=check_cv(self.cv), method_mapping=MethodMapping().add(caller="fit", callee="split"))
                .add(scorer=self._get_scorer(), method_mapping=MethodMapping().add(caller="score", callee="score")
                     .add(caller="fit", callee="score")))

    def score(self, X: Any, y: Any, sample_weight: Any = None, **score_params) -> float:
        """The ``scoring`` option's score of the fitted model on (X, y), as scikit-learn's
        ``LogisticRegressionCV.score`` (``sample_weight`` and routed metadata reach the scorer)."""
        _raise_for_params(score_params, self, "score")
        if sample_weight is not None:
            score_params["sample_weight"] = sample_weight
        if _routing_enabled():
            params = process_routing(self, "score", **score_params).scorer.score
        else:
            params = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self._get_scorer()(self, X, y, **params)

    def fit(self, X: Any, y: Any, sample_weight: Any = None, **params) -> SoftmaxRegressionCV:
        """Search (l1_ratio ×) C over the folds, then refit; returns self. ``params`` are routed
        to the splitter and the scorer (scikit-learn's metadata routing, when enabled)."""
        _raise_for_params(params, self, "fit")
        self._check_params()
        grid = self._grid()
        given_ratios = self._ratios()
        ratios = np.zeros(1) if given_ratios is None else given_ratios
        solver = self._solver(ratios)
        out_dtype = coefficient_dtype(X)
        X, y, classes, y_ids = fit_data(self, X, y, min_samples=2)
        if _routing_enabled():
            routed = process_routing(self, "fit", sample_weight=sample_weight, **params)
            split_params, score_params = routed.splitter.split, routed.scorer.score
        else:
            split_params, score_params = {}, ({} if sample_weight is None else {"sample_weight": sample_weight})
        folds = self._folds(X, y, split_params)
        base, total = training_weights(self.class_weight, sample_weight, X, y, classes, y_ids)
        unit = total / float(np.sum(base))  # what a weight of 1 in `base` weighs
        n, d = X.shape
        k = len(classes)
        n_folds, n_cs, n_ratios = len(folds), len(grid), len(ratios)
        weights = np.zeros((n_folds, n))
        for i, (train, _) in enumerate(folds):
            weights[i, train] = base[train]
        # Each fold's penalties in the scaled form (see penalty_strengths), from its own
        # training weights; a fold whose training rows all weigh 0 is the penalty alone, whose
        # minimum W = 0 any λ > 0 finds.
        totals = weights.sum(axis=1) * unit
        totals = np.where(totals > 0, totals, 1.0)
        peaks = weights.max(axis=1)  # each fold's weights divided by their largest (float32, tiny)
        weights = weights / np.where(peaks > 0, peaks, 1.0)[:, None]
        means = scales = None
        if self.standardize:
            moments = [column_moments(X, rows=np.isin(np.arange(n), train)) for train, _ in folds]
            means = np.stack([m for m, _ in moments])
            scales = np.stack([np.where(s > 0, s, 1.0) for _, s in moments])
        # The models, ratio-major: model r·F + i is ratio r on fold i (one row of weights each).
        model_weights = np.tile(weights, (n_ratios, 1))
        model_means = None if means is None else np.tile(means, (n_ratios, 1))
        model_scales = None if scales is None else np.tile(scales, (n_ratios, 1))
        with_l1 = bool(np.any(ratios > 0))
        biases = np.zeros((n_folds, n_cs, n_ratios, k))
        scores = np.zeros((n_folds, n_cs, n_ratios))
        # X stored in 16 bits is searched as stored, in float32 (its products' accumulation).
        half = is_half_precision(X)
        with enable_x64(self.dtype == "float64" and not half):
            dtype = jnp.dtype(jnp.float32 if half else self.dtype)
            # A dense X in the fits' dtype, read in place by fit_many when large (no device copy).
            X_device = as_dtype(X, dtype, keep_half=True)
            # NumPy inputs: no eager JAX conversions to compile (fit_many's program is stored, _aot).
            labels = np.asarray(y_ids, np.int32)
            W = np.zeros((n_ratios * n_folds, d, k), dtype)
            b = np.zeros((n_ratios * n_folds, k), dtype) if self.fit_intercept else None
            fold_weights = np.asarray(model_weights, dtype)
            mesh = device_mesh(self.devices)
            if mesh is not None:  # the rows split over the devices: zero-weight rows to a multiple
                X_device, labels, fold_weights = pad_rows(X_device, labels, fold_weights.T, X_device.dtype,
                                                          multiple=mesh.size)
                fold_weights = np.ascontiguousarray(fold_weights.T)
            # The whole grid in one program: a scan along the Cs (each warm-started from the
            # previous C's fits) of one vmapped solve of every (ratio, fold) model.
            strengths = np.array([[penalty_strengths(C, total, k, self.dtype, ratio)
                                   for ratio in ratios for total in totals] for C in grid])  # (C, R·F, 2): λ, λ₁
            result = fit_many(Params(W, b), X_device, labels, sample_weights=fold_weights,
                              l2=np.asarray(strengths[..., 0], dtype),
                              l1=np.asarray(strengths[..., 1], dtype) if with_l1 else None,
                              solver=solver, tol=float(self.tol), max_iter=int(self.max_iter),
                              feature_means=model_means, feature_scales=model_scales,
                              mesh=mesh, data_axis=None if mesh is None else "data")
            # (C, R·F, ...) → (F, C, R, ...)
            paths = np.asarray(result.params.W, np.float64).reshape(n_cs, n_ratios, n_folds, d, k).transpose(2, 0, 1, 3, 4)
            if self.fit_intercept:
                biases = np.asarray(result.params.b, np.float64).reshape(n_cs, n_ratios, n_folds, k).transpose(2, 0, 1, 3)
            iterations = np.asarray(result.n_iter, np.int32).reshape(n_cs, n_ratios, n_folds).transpose(2, 0, 1)
        for i, (_, test) in enumerate(folds):
            models = [self._fitted(C, paths[i, j, r], biases[i, j, r] if self.fit_intercept else None, classes, d,
                                   None if means is None else means[i], None if scales is None else scales[i],
                                   ratio, solver)
                      for j, C in enumerate(grid) for r, ratio in enumerate(ratios)]
            if self.scoring is None and set(score_params) <= {"sample_weight"}:
                # accuracy, as model.score(X[test], ...), but never a whole copy of X[test]
                predicted = _predict_by_blocks(models, X, test)
                weight = score_params.get("sample_weight")
                weight = None if weight is None else np.asarray(weight)[test]
                fold_scores = [accuracy_score(y[test], p, sample_weight=weight) for p in predicted]
            else:
                scorer = _with_labels(self._get_scorer(), classes)
                fold_params = _check_method_params(X, params=score_params, indices=test)
                X_test, y_test = X[test], y[test]
                fold_scores = [scorer(model, X_test, y_test, **fold_params) for model in models]
            scores[i] = np.reshape(fold_scores, (n_cs, n_ratios))
        self.Cs_, self.classes_, self.l1_ratios_ = grid, classes, ratios
        # LogisticRegressionCV's choice: the argmax over (C, ratio) flattened C-major, so a tie
        # goes to the smaller C, then to the earlier ratio.
        if self.refit:
            best_C, best_ratio = np.unravel_index(int(np.argmax(scores.sum(axis=0))), (n_cs, n_ratios))
            C_best, ratio_best = grid[best_C], float(ratios[best_ratio])
            mean_W = paths[:, best_C, best_ratio].mean(axis=0)
            mean_b = biases[:, best_C, best_ratio].mean(axis=0)
        else:  # scikit-learn's: each fold's own best (C, ratio); their coefficients, Cs and ratios averaged
            best_C, best_ratio = np.unravel_index(np.argmax(scores.reshape(n_folds, -1), axis=1), (n_cs, n_ratios))
            C_best, ratio_best = float(np.mean(grid[best_C])), float(np.mean(ratios[best_ratio]))
            mean_W = paths[np.arange(n_folds), best_C, best_ratio].mean(axis=0)
            mean_b = biases[np.arange(n_folds), best_C, best_ratio].mean(axis=0)
        self.C_ = np.full(1 if k == 2 else k, C_best)  # scikit-learn: one per class, one if binary
        self.l1_ratio_ = np.full(1 if k == 2 else k, ratio_best)
        intercept_column = (biases[..., None, :] if self.fit_intercept
                            else np.zeros((n_folds, n_cs, n_ratios, 0, k)))
        full = np.concatenate([paths, intercept_column], axis=3).swapaxes(3, 4)  # (F, C, R, K, D+1)
        if given_ratios is None:  # no l1-ratio axis, as scikit-learn without l1_ratios
            full, scores, iterations = full[:, :, 0], scores[:, :, 0], iterations[:, :, 0]
        if k == 2:  # scikit-learn's binomial layout: one key, the positive class, w₁ − w₀
            self.scores_ = {classes[1]: scores}
            self.coefs_paths_ = {classes[1]: full[..., 1, :] - full[..., 0, :]}
        else:
            self.scores_ = {c: scores for c in classes}
            self.coefs_paths_ = {c: full[..., i, :] for i, c in enumerate(classes)}
        self.n_iter_ = iterations[None]
        final_solver = solver if self.solver != "auto" else ("lbfgs" if ratio_best == 0 else solver)
        if self.refit:
            final = self._template(C_best, ratio_best, final_solver).set_params(warm_start=True)
            final.classes_ = classes
            final.coef_, final.intercept_ = public_coefficients(mean_W, mean_b if self.fit_intercept else None)
            final.fit(X, y, sample_weight=sample_weight)
            final.warm_start = False
        else:
            m_mean = None if means is None else means.mean(axis=0)
            m_scale = None if scales is None else scales.mean(axis=0)
            final = self._fitted(C_best, mean_W, mean_b if self.fit_intercept else None, classes, d,
                                 m_mean, m_scale, ratio_best, final_solver)
        final.coef_, final.intercept_ = final.coef_.astype(out_dtype), final.intercept_.astype(out_dtype)
        self.best_estimator_ = final
        self.coef_, self.intercept_ = final.coef_, final.intercept_
        return self

    def _template(self, C: float, l1_ratio: float, solver: str) -> SoftmaxRegression:
        return SoftmaxRegression(C=C, l1_ratio=l1_ratio, fit_intercept=self.fit_intercept,
                                 class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol,
                                 solver=solver, standardize=self.standardize, dtype=self.dtype, devices=self.devices)

    def _fitted(self, C, W, b, classes, d, mean, scale, l1_ratio, solver) -> SoftmaxRegression:
        """A :class:`SoftmaxRegression` holding given coefficients (for scoring a fold)."""
        model = self._template(C, l1_ratio, solver)
        model.classes_, model.n_features_in_ = classes, d
        model.coef_, model.intercept_ = public_coefficients(W, b)
        if self.standardize:
            model.mean_, model.scale_ = mean, scale
        return model

    def _final(self) -> SoftmaxRegression:
        check_is_fitted(self)
        return self.best_estimator_

    def decision_function(self, X: Any) -> np.ndarray:
        return self._final().decision_function(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._final().predict_proba(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return self._final().predict_log_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        return self._final().predict(X)
