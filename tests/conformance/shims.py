"""scikit-learn's ``LogisticRegression`` and ``LogisticRegressionCV`` signatures over jsoftmax.

Thin on purpose: each shim is a subclass of jsoftmax's estimator that takes scikit-learn's
parameters, translates the ones that mean the same thing (``C``, ``penalty=None`` as
``C=np.inf``, ``penalty`` and ``l1_ratio(s)`` as jsoftmax's ``l1_ratio(s)``, the solvers that
minimise the same objective: saga as OWL-QN for an L1 part) for the duration of ``fit``, and
lays ``LogisticRegressionCV``'s attributes out as scikit-learn 1.9 does (with or without the
l1-ratio axis; legacy dicts or the new arrays). Everything a test observes — coefficients,
predictions, warnings, errors, routing — is jsoftmax's own behaviour. Options jsoftmax does not
offer raise :class:`NotOffered`; the tests that need them are listed in ``not_applicable.py``,
so a ``NotOffered`` anywhere else fails its test.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
from sklearn.metrics import get_scorer

from jsoftmax import SoftmaxRegression, SoftmaxRegressionCV

# scikit-learn's solvers that minimise the multinomial L2 objective, run as jsoftmax's own;
# liblinear (a penalised intercept, one-vs-rest) is not that objective. saga, scikit-learn's
# solver for the L1 and elastic-net penalties, runs as OWL-QN when one is asked for.
SOLVERS = {"lbfgs": "lbfgs", "newton-cg": "newton-cg", "newton-cholesky": "newton-cg",
           "sag": "lbfgs", "saga": "lbfgs"}
L1_SOLVERS = {"saga": "owlqn"}


class NotOffered(NotImplementedError):
    """An option of scikit-learn's that jsoftmax does not offer."""


def _solver(solver, dual, l1: bool = False) -> str:
    if dual:
        raise NotOffered("dual=True (liblinear's dual formulation)")
    if solver not in SOLVERS:
        raise NotOffered(f"solver={solver!r}")
    return L1_SOLVERS.get(solver, solver) if l1 else SOLVERS[solver]


def _ratio(penalty, l1_ratio):
    """scikit-learn's penalty (not None) and l1_ratio as jsoftmax's l1_ratio."""
    if penalty == "l1":
        return 1.0
    if penalty == "l2":
        return 0.0
    if penalty == "elasticnet":
        return l1_ratio  # None: jsoftmax refuses it, naming l1_ratio
    return 0.0 if l1_ratio is None else l1_ratio  # the default "deprecated"


@contextlib.contextmanager
def _swapped(estimator, **values):
    """jsoftmax's meaning of some parameters while ``fit`` runs; scikit-learn's again after."""
    saved = {name: getattr(estimator, name) for name in values}
    try:
        for name, value in values.items():
            setattr(estimator, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(estimator, name, value)


class LogisticRegression(SoftmaxRegression):
    # jsoftmax's options that scikit-learn's signature lacks, at their defaults.
    learning_rate, batch_size, standardize, dtype, devices = 0.01, None, False, "float64", None
    feature_memory = "auto"

    def __init__(self, penalty="deprecated", *, C=1.0, l1_ratio=0.0, dual=False, tol=1e-4,
                 fit_intercept=True, intercept_scaling=1, class_weight=None, random_state=None,
                 solver="lbfgs", max_iter=100, verbose=0, warm_start=False, n_jobs=None):
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
        self.dual = dual
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.class_weight = class_weight
        self.random_state = random_state
        self.solver = solver
        self.max_iter = max_iter
        self.verbose = verbose
        self.warm_start = warm_start
        self.n_jobs = n_jobs

    def fit(self, X, y, sample_weight=None):
        # penalty=None is C=inf; otherwise the penalty names an l1_ratio.
        C, ratio = (np.inf, 0.0) if self.penalty is None else (self.C, _ratio(self.penalty, self.l1_ratio))
        solver = _solver(self.solver, self.dual, l1=isinstance(ratio, numbers.Real) and ratio > 0 and np.isfinite(C))
        with _swapped(self, C=C, l1_ratio=ratio, solver=solver, random_state=None):
            return super().fit(X, y, sample_weight)


class LogisticRegressionCV(SoftmaxRegressionCV):
    standardize, dtype, devices = False, "float64", None

    def __init__(self, *, Cs=10, l1_ratios="warn", fit_intercept=True, cv=None, dual=False,
                 penalty="deprecated", scoring="warn", solver="lbfgs", tol=1e-4, max_iter=100,
                 class_weight=None, n_jobs=None, verbose=0, refit=True, intercept_scaling=1.0,
                 random_state=None, use_legacy_attributes="warn"):
        self.Cs = Cs
        self.l1_ratios = l1_ratios
        self.fit_intercept = fit_intercept
        self.cv = cv
        self.dual = dual
        self.penalty = penalty
        self.scoring = scoring
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.refit = refit
        self.intercept_scaling = intercept_scaling
        self.random_state = random_state
        self.use_legacy_attributes = use_legacy_attributes

    def _get_scorer(self):
        return get_scorer("accuracy" if self.scoring in ("warn", None) else self.scoring)

    def fit(self, X, y, sample_weight=None, **params):
        ratios = None if isinstance(self.l1_ratios, str) or self.l1_ratios is None else list(self.l1_ratios)
        grid = _cv_ratios(self.penalty, ratios)
        l1 = grid is not None and any(isinstance(r, numbers.Real) and r > 0 for r in grid)
        scoring = None if self.scoring == "warn" else self.scoring
        with _swapped(self, solver=_solver(self.solver, self.dual, l1=l1), scoring=scoring, l1_ratios=grid):
            super().fit(X, y, sample_weight, **params)
        # scikit-learn adds the l1-ratio axis when l1_ratios is given, not for penalty="l1"
        self._lay_out(ratios if self.penalty in ("deprecated", "elasticnet") else None,
                      legacy=self.use_legacy_attributes in (True, "warn"))
        return self

    def _lay_out(self, ratios, legacy: bool) -> None:
        """jsoftmax's attributes (scikit-learn's legacy layout, with an l1-ratio axis when
        ``l1_ratios`` is given) in the layout scikit-learn 1.9 gives for these parameters."""
        if ratios is None and self.l1_ratios_.size == 1:  # a searched l1 ratio without its axis
            self.scores_ = {c: s[:, :, 0] if s.ndim == 3 else s for c, s in self.scores_.items()}
            self.coefs_paths_ = {c: p[:, :, 0] if p.ndim == 4 else p for c, p in self.coefs_paths_.items()}
            self.n_iter_ = self.n_iter_[..., 0] if self.n_iter_.ndim == 4 else self.n_iter_
        if legacy:
            if ratios is None:
                self.l1_ratios_ = np.asarray([None])
                self.l1_ratio_ = np.asarray([None if self.refit else 0.0] * len(self.C_))
            return
        keys = list(self.coefs_paths_)
        paths = np.stack([self.coefs_paths_[c] for c in keys])  # (classes, F, C[, R], dof)
        scores = self.scores_[keys[0]]  # (F, C[, R])
        n_iter = self.n_iter_[0]  # (F, C[, R])
        if ratios is None:  # one ratio
            paths, scores, n_iter = paths[:, :, :, None], scores[:, :, None], n_iter[:, :, None]
            self.l1_ratios_ = np.asarray([None])
        self.C_ = float(self.C_[0])
        self.l1_ratio_ = float(self.l1_ratio_[0])
        # (F, l1, C, classes, dof), (F, l1, C), (F, l1, C)
        self.coefs_paths_ = np.moveaxis(paths, (0, 1, 3), (3, 0, 1))
        self.scores_ = np.swapaxes(scores, 1, 2)
        self.n_iter_ = np.swapaxes(n_iter, 1, 2)


def _cv_ratios(penalty, ratios):
    """LogisticRegressionCV's penalty and l1_ratios as SoftmaxRegressionCV's l1_ratios."""
    if penalty is None:
        raise NotOffered("penalty=None in LogisticRegressionCV")
    if penalty == "l2":
        return None
    if penalty == "l1":
        return [1.0]
    if penalty == "elasticnet":
        return [] if ratios is None else ratios  # None: jsoftmax refuses it, naming l1_ratios
    return ratios  # the default "deprecated": the ratios as given
