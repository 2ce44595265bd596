"""scikit-learn's ``LogisticRegression`` and ``LogisticRegressionCV`` signatures over jsoftmax.

Thin on purpose: each shim is a subclass of jsoftmax's estimator that takes scikit-learn's
parameters, translates the ones that mean the same thing (``C``, ``penalty=None`` as
``C=np.inf``, the solvers that minimise the same L2 objective) for the duration of ``fit``, and
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


def _l2_only(penalty, l1_ratios) -> bool:
    """True for the L2 penalty, False for none (``penalty=None``); L1 parts are not offered."""
    if penalty is None:
        return False
    if penalty in ("l1", "elasticnet") or any(r not in (0, None) for r in l1_ratios):
        raise NotOffered(f"penalty={penalty!r}, l1_ratio(s)={list(l1_ratios)} (L1/elastic-net)")
    return True


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
        if not _l2_only(self.penalty, ratios or []):
            raise NotOffered("penalty=None in LogisticRegressionCV")
        scoring = None if self.scoring == "warn" else self.scoring
        with _swapped(self, solver=_solver(self.solver, self.dual), scoring=scoring):
            super().fit(X, y, sample_weight, **params)
        self._lay_out(ratios, legacy=self.use_legacy_attributes in (True, "warn"))
        return self

    def _lay_out(self, ratios, legacy: bool) -> None:
        """jsoftmax's attributes (scikit-learn's legacy layout without an l1-ratio axis) in the
        layout scikit-learn 1.9 gives for these parameters."""
        n_ratios = 1 if ratios is None else len(ratios)
        keys = list(self.coefs_paths_)
        paths = np.stack([self.coefs_paths_[c] for c in keys])  # (classes, F, C, dof)
        scores = self.scores_[keys[0]]  # (F, C)
        n_iter = self.n_iter_[0]  # (F, C)
        self.l1_ratios_ = np.asarray([None] if ratios is None else ratios)
        if legacy:
            ratio = None if ratios is None else float(ratios[0])
            self.l1_ratio_ = np.asarray([ratio if self.refit else 0.0] * len(self.C_))
            if ratios is not None:  # the l1-ratio axis, as scikit-learn adds it when asked for
                self.coefs_paths_ = {c: np.repeat(p[:, :, None], n_ratios, axis=2) for c, p in zip(keys, paths)}
                self.scores_ = {c: np.repeat(scores[:, :, None], n_ratios, axis=2) for c in keys}
                self.n_iter_ = np.repeat(n_iter[None, :, :, None], n_ratios, axis=3)
            return
        self.C_ = float(self.C_[0])
        self.l1_ratio_ = 0.0 if ratios is None else float(ratios[0])
        # (F, l1, C, classes, dof), (F, l1, C), (F, l1, C)
        self.coefs_paths_ = np.repeat(paths.transpose(1, 2, 0, 3)[:, None], n_ratios, axis=1)
        self.scores_ = np.repeat(scores[:, None], n_ratios, axis=1)
        self.n_iter_ = np.repeat(n_iter[:, None], n_ratios, axis=1)
