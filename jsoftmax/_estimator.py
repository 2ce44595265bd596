"""``SoftmaxRegression``: a scikit-learn estimator backed by the analytic gradient.

Objective (scikit-learn's ``LogisticRegression`` with the L2 penalty, so ``C`` means the same):

.. math::

    \\min_{W, b}\\; C \\sum_n s_n \\ell_n(W, b) + \\tfrac12 \\lVert W \\rVert^2

which jsoftmax minimises in the equivalent scaled form ``risk(..., l2=1/(C Σ s))``. As in
scikit-learn, a binary problem is the binomial model: one weight vector ``w`` (``coef_`` has
shape (1, D)) with penalty ½‖w‖². It is fitted as the symmetric two-column softmax with the L2
doubled, whose optimum has w₀ = −w₁ and the same objective value, and reported as
``coef_ = w₁ − w₀``.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _checkpoint, _inplace, _sparse
from ._compat import enable_x64
from ._api import host_predictions
from .train import fit, newton_cg, registry
from ._types import Params

FULL_BATCH_SOLVERS = tuple(registry.SOLVERS)  # jsoftmax.train's solvers, by name
SOLVERS = ("auto", *FULL_BATCH_SOLVERS, "adam", "sgd")
MODEL_FORMAT = 2  # 2: checksum, array manifest, feature names; 1 still loads
# Full-batch fits pad the rows up to a bucket (at most 1/8 more, weight 0) so that a new N in the
# same bucket reuses the compiled program, while the padded copy costs little next to a compile:
# up to 64 MiB of X (benchmarks/first_call.py --new-n measures both).
ROW_BUCKET_MAX_BYTES = 64 * 2**20


def row_bucket(n: int) -> int:
    """The smallest m·2^e ≥ n with m in 8..15 (eight buckets per doubling), at least 64."""
    if n <= 64:
        return 64
    step = 2 ** (max(n - 1, 1).bit_length() - 4)
    return -(-n // step) * step


def pad_rows(X: np.ndarray, y_ids: np.ndarray, sample_weight: np.ndarray, dtype
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, labels and weights padded with zero-weight rows to :func:`row_bucket` (unchanged when
    the padded X would exceed ``ROW_BUCKET_MAX_BYTES``). Zero-weight rows leave every sum
    exactly (the engine skips rows whose coefficient is 0), so the fit is the same. A sparse X
    gets empty rows (no stored entries) while its CSR arrays stay within the same bound."""
    n, d = X.shape
    rows = row_bucket(n)
    sparse = _sparse.is_sparse(X)
    size = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) if sparse else rows * d * np.dtype(dtype).itemsize
    if rows == n or size > ROW_BUCKET_MAX_BYTES:
        return (X.astype(dtype, copy=False) if sparse else np.asarray(X, dtype)), y_ids, sample_weight
    if sparse:
        import scipy.sparse as sp

        padded = sp.vstack([X.astype(dtype), sp.csr_matrix((rows - n, d), dtype=dtype)], format="csr")
    else:
        padded = _inplace.aligned_empty((rows, d), dtype)  # adopted by the device, not copied
        padded[:n] = X
        padded[n:] = 0
    return (padded, np.concatenate([y_ids, np.zeros(rows - n, y_ids.dtype)]),
            np.concatenate([sample_weight, np.zeros(rows - n, sample_weight.dtype)]))


@functools.lru_cache(maxsize=32)
def make_optimizer(solver: str, learning_rate: float) -> optax.GradientTransformation:
    """The optax transformation of a minibatch solver name; cached so refits reuse compiled
    programs."""
    if solver == "adam":
        return optax.adam(learning_rate)
    if solver == "sgd":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} "
                     "or pass an optax.GradientTransformation.")


def choose_solver(n: int, d: int, k: int, batch_size: int | None, sparse: bool = False) -> str:
    """The solver ``solver="auto"`` picks: "adam" for minibatches, "newton-cg" for sparse X,
    else "lbfgs".

    Measured on this project's CPU (``benchmarks/results/fit-cpu.md``, float64, the fit suite's
    digits, 50k×128×20 and 100k×256×50 at tol 1e-4 and 1e-6): the lean L-BFGS took 0.59–0.72×
    Newton-CG's time on the synthetic problems and 0.61–0.88× on digits; Newton-CG needs 3–10×
    fewer outer iterations, but each CG step costs an HVP. The arguments are the problem's
    shape, so that the rule can grow with the measurements (e.g. ill-conditioned problems,
    where Newton-CG's iteration count matters most).

    Sparse (text) problems have many features, where L-BFGS's history of 2 × 10 (D, K) arrays
    outgrows the data, and there Newton-CG was faster too (``benchmarks/results/sparse-cpu.md``:
    the news20-shaped problem 1.4 s against L-BFGS's 7.9 s).
    """
    del n, d, k  # no measured dense shape favours Newton-CG by enough to switch yet
    if batch_size is not None:
        return "adam"
    return newton_cg.SOLVER.name if sparse else registry.DEFAULT


def column_moments(X: np.ndarray, block_rows: int | None = None,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in float64, over blocks of rows (default: 16 MiB
    of float64 each): no N×D temporary (numpy's ``std`` would build X − mean whole). ``rows``:
    a boolean (N,) mask of the rows to use (a fold's training rows), taken block by block
    instead of as a copy ``X[rows]``. A sparse X is scaled without centring (mean 0, as
    ``StandardScaler(with_mean=False)``): centring would fill in every zero."""
    if _sparse.is_sparse(X):
        return _sparse.column_moments(X if rows is None else X[np.flatnonzero(rows)])
    n = X.shape[0]
    block_rows = block_rows or max(1, 2**21 // max(X.shape[1], 1))
    blocks = [slice(start, start + block_rows) for start in range(0, n, block_rows)]

    def block(part: slice) -> np.ndarray:
        return X[part] if rows is None else X[part][rows[part]]

    count = n if rows is None else int(np.count_nonzero(rows))
    mean = sum(block(part).sum(axis=0, dtype=np.float64) for part in blocks) / count
    squares = np.zeros(X.shape[1])
    for part in blocks:
        centred = block(part).astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    return mean, np.sqrt(squares / count)


def coefficient_dtype(X: Any) -> type:
    """The dtype of ``coef_``: float32 for float32 data, as scikit-learn keeps it; else float64."""
    return np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64


def training_weights(class_weight, sample_weight, X, y, classes, y_ids) -> tuple[np.ndarray, float]:
    """(weights, total): each row's sample weight times its class weight, divided by the
    largest (the fit's mean-form objective does not change with their scale, and float32 or
    tiny weights keep their ratios), and the sum of the undivided weights (float64), which
    sets the penalty's scale. Weights are checked and never modified in place."""
    weights = _check_sample_weight(sample_weight, X, dtype=np.float64, copy=True)
    if np.any(weights < 0):
        raise ValueError("`sample_weight` must be non-negative.")
    if class_weight is not None:
        weights = weights * compute_class_weight(class_weight, classes=classes, y=y)[y_ids]
    peak = float(np.max(weights, initial=0.0))
    if not peak > 0:
        raise ValueError("`sample_weight` sums to 0: no sample counts.")
    scaled = weights / peak
    return scaled, float(np.sum(scaled)) * peak


def penalty_strength(C: float, total: float, n_classes: int, dtype: str) -> float:
    """The scaled form's L2 strength λ = 1/(C·Σs) (doubled for the binomial model, fitted as
    the symmetric softmax) of scikit-learn's objective C·Σ sₙℓₙ + ½‖W‖²; 0 for C = inf.
    Beyond what ``dtype`` holds (weights summing to ~1e-40 in float32) it is that dtype's
    largest number: the penalty then outweighs the data either way and W is 0."""
    if not np.isfinite(C):
        return 0.0
    return min((2.0 if n_classes == 2 else 1.0) / (C * total), float(np.finfo(dtype).max))


def public_coefficients(W: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``coef_`` (K, D) and ``intercept_`` (K,) of (D, K) weights and a bias;
    for two classes the binomial layout: (1, D) and (1,), w₁ − w₀."""
    if W.shape[1] == 2:
        return (W[:, 1] - W[:, 0])[None, :], np.array([0.0 if b is None else b[1] - b[0]])
    return W.T.copy(), np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64).copy()


def warn_not_converged(solver: str, result) -> None:
    """scikit-learn's ``ConvergenceWarning`` for a fit that stopped before ``tol``."""
    reason = {"max_iter": "the iteration limit was reached", "max_epochs": "the epoch limit was reached",
              "stalled": "no step decreased the objective further (rounding level)",
              "diverged": "the objective became NaN or infinite"}.get(result.stop_reason, result.stop_reason)
    warnings.warn(f"{solver} failed to converge after {result.n_iter} iteration(s): {reason} "
                  f"(largest gradient entry {result.grad_norm:.3g}). Increase the number of "
                  "iterations (max_iter), or scale the data (standardize=True).",
                  ConvergenceWarning, stacklevel=3)


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression fitted with Optax and jsoftmax's analytic gradient.

    Parameters follow scikit-learn's ``LogisticRegression`` where they overlap.

    Args:
      C: inverse L2 strength, as in scikit-learn (objective C Σ sₙℓₙ + ½‖W‖²).
      fit_intercept: learn a bias b (not penalised).
      class_weight: None, a dict {class: weight}, or "balanced".
      max_iter: iterations (full batch) or epochs (with ``batch_size``).
      tol: stop when the largest gradient entry of the scaled objective is ≤ tol.
      warm_start: start from the previous fit's coefficients when shapes allow.
      solver: "auto" (see :func:`choose_solver`), "newton-cg" (trust-region Newton-CG on the
        analytic Hessian-vector product), "lbfgs" (jsoftmax's lean L-BFGS) — both full batch —,
        "adam", "sgd" (momentum 0.9) for minibatches, or any ``optax.GradientTransformation``.
      learning_rate: step size for "adam" and "sgd".
      batch_size: minibatch size (not with "lbfgs"); None for full batch.
      standardize: fit per-feature mean and scale on the training set, store them with the
        model and apply them before every prediction (folded into the weights). A sparse X is
        scaled without centring (``mean_`` is 0), as ``StandardScaler(with_mean=False)``:
        centring would fill in every zero.
      dtype: "float64" (computed in a scoped x64 context) or "float32".
      random_state: seed of the minibatch shuffles.

    Attributes:
      classes_: the class labels, sorted as ``np.unique`` gives them.
      coef_: (K, D), or (1, D) for two classes (w₁ − w₀); float32 for float32 data. It is the
        model: predictions, warm starts and saving read it (write it to change the model).
      intercept_: (K,), or (1,) for two classes.
      n_features_in_: D.
      n_iter_: (1,) iterations (or epochs with ``batch_size``) of the fit.
      optimality_: dict of grad_norm, n_iter, converged, stop_reason and tol.
      loss_curve_: the objective after each iteration (or epoch).
      mean_, scale_: (D,) each, with ``standardize``.

    Example:
      >>> from sklearn.datasets import load_iris
      >>> from jsoftmax import SoftmaxRegression
      >>> X, y = load_iris(return_X_y=True)
      >>> model = SoftmaxRegression(standardize=True).fit(X, y)
      >>> model.optimality_["converged"], round(model.score(X, y), 2)
      (True, 0.97)
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        fit_intercept: bool = True,
        class_weight: dict | str | None = None,
        max_iter: int = 100,
        tol: float = 1e-4,
        warm_start: bool = False,
        solver: str | optax.GradientTransformation = "auto",
        learning_rate: float = 0.01,
        batch_size: int | None = None,
        standardize: bool = False,
        dtype: str = "float64",
        random_state: int | None = None,
    ):
        self.C = C
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.solver = solver
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.standardize = standardize
        self.dtype = dtype
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # scipy.sparse X is fitted as it is (never densified)
        return tags

    # --- fitting ------------------------------------------------------------------------

    def _optimizer(self, n: int, d: int, k: int, sparse: bool = False) -> dict[str, Any]:
        """``fit``'s solver keywords: ``solver=`` a built-in name or ``optimizer=`` optax's."""
        if isinstance(self.solver, str):
            solver = choose_solver(n, d, k, self.batch_size, sparse) if self.solver == "auto" else self.solver
            if solver in FULL_BATCH_SOLVERS:
                if self.batch_size is not None:
                    raise ValueError(f"solver={solver!r} is full-batch: set batch_size=None, or use "
                                     "solver='adam' or 'sgd' for minibatches.")
                return {"solver": solver}
            return {"optimizer": make_optimizer(solver, float(self.learning_rate))}
        if hasattr(self.solver, "init") and hasattr(self.solver, "update"):
            return {"optimizer": self.solver}
        raise ValueError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)} "
                         "or pass an optax.GradientTransformation.")

    def _check_params(self) -> None:
        if not (isinstance(self.C, numbers.Real) and not isinstance(self.C, bool) and self.C > 0):
            raise ValueError(f"`C` must be a positive number (np.inf: no penalty); got {self.C!r}.")
        for name in ("fit_intercept", "warm_start", "standardize"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False; got {getattr(self, name)!r}.")
        if not (isinstance(self.learning_rate, numbers.Real) and self.learning_rate > 0
                and np.isfinite(self.learning_rate)):
            raise ValueError(f"`learning_rate` must be a positive finite number; got {self.learning_rate!r}.")
        if self.batch_size is not None and not (isinstance(self.batch_size, numbers.Integral)
                                                and not isinstance(self.batch_size, bool) and self.batch_size > 0):
            raise ValueError(f"`batch_size` must be None or a positive int; got {self.batch_size!r}.")
        if self.random_state is not None and not (isinstance(self.random_state, numbers.Integral)
                                                  and not isinstance(self.random_state, bool)):
            raise ValueError(f"`random_state` must be None or an int; got {self.random_state!r}.")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"`class_weight` must be None, 'balanced' or a dict; got {self.class_weight!r}.")
        if isinstance(self.solver, str) and self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)} "
                             "or pass an optax.GradientTransformation.")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"`dtype` must be 'float64' or 'float32'; got {self.dtype!r}.")
        if not (isinstance(self.max_iter, numbers.Integral) and not isinstance(self.max_iter, bool)
                and self.max_iter >= 0):
            raise ValueError(f"`max_iter` must be an int >= 0 (0: return the start); got {self.max_iter!r}.")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"`tol` must be a non-negative number; got {self.tol!r}.")

    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        callback=None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
    ) -> SoftmaxRegression:
        """Fit to features X (N, D) and labels y (N,) of any type; returns self.

        ``callback``, ``checkpoint_dir``, ``checkpoint_every`` and ``resume`` are passed to
        :func:`jsoftmax.fit` (progress reports; atomic checkpoints of the training state).
        A fit that ends before it converges (``max_iter`` reached, stalled or diverged) warns
        with scikit-learn's ``ConvergenceWarning``, as ``LogisticRegression`` does.
        """
        self._check_params()
        out_dtype = coefficient_dtype(X)
        X, y = validate_data(self, X, y, dtype=self._input_dtypes(), ensure_min_samples=1,
                             accept_sparse="csr")
        check_classification_targets(y)
        classes, y_ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"`y` needs samples of at least 2 classes; got 1 class: {classes[0]!r}."
            )
        sample_weight, total = training_weights(self.class_weight, sample_weight, X, y, classes, y_ids)
        if self.standardize:
            self.mean_, scale = column_moments(X)
            self.scale_ = np.where(scale > 0, scale, 1.0)
        n_classes, n_features = len(classes), X.shape[1]
        solver = self._optimizer(X.shape[0], n_features, n_classes, _sparse.is_sparse(X))
        l2 = penalty_strength(self.C, total, n_classes, self.dtype)

        warm = (
            self.warm_start
            and getattr(self, "coef_", None) is not None
            and np.shape(self.coef_)[1:] == (n_features,)
            and np.array_equal(getattr(self, "classes_", None), classes)
        )
        with enable_x64(self.dtype == "float64"):
            dtype = jnp.dtype(self.dtype)
            # NumPy arrays in the fit's dtype: no eager JAX conversion (a program to compile) here.
            W0, b0 = self._coefficients() if warm else (np.zeros((n_features, n_classes)), np.zeros(n_classes))
            if n_classes == 2:  # the symmetric two-column form of the binomial model (w₀ = −w₁)
                W0, b0 = W0 - W0.mean(axis=1, keepdims=True), b0 - b0.mean()
            W0 = np.asarray(W0, dtype)
            b0 = np.asarray(b0, dtype) if self.fit_intercept else None
            minibatch = self.batch_size is not None
            if minibatch and _sparse.is_sparse(X):
                raise ValueError("`batch_size` (minibatches) is not supported for sparse X; use the "
                                 "full-batch solvers 'lbfgs' or 'newton-cg'.")
            X_fit, y_fit, w_fit = ((np.asarray(X, dtype), y_ids, sample_weight) if minibatch
                                   else pad_rows(X, y_ids, sample_weight, dtype))
            # X reaches the device in the fit's dtype without another copy (a large X is read
            # in place, see jsoftmax._inplace); standardisation is folded into the weights
            # (jsoftmax.fit's feature_mean/feature_scale), never a scaled copy.
            result = fit(
                Params(W0, b0),
                X_fit,
                np.asarray(y_fit, np.int32),
                **solver,
                sample_weight=np.asarray(w_fit, dtype),
                l2=l2,
                batch_size=self.batch_size,
                max_iter=int(self.max_iter),
                max_epochs=int(self.max_iter),
                tol=float(self.tol),
                seed=0 if self.random_state is None else int(self.random_state),
                callback=callback,
                callback_every=10,
                checkpoint_dir=checkpoint_dir,
                checkpoint_every=checkpoint_every,
                resume=resume,
                feature_mean=self.mean_ if self.standardize else None,
                feature_scale=self.scale_ if self.standardize else None,
            )
        self.classes_ = classes
        self._set_coefficients(np.asarray(result.params.W, np.float64),
                               None if result.params.b is None else np.asarray(result.params.b, np.float64),
                               out_dtype)
        self.n_iter_ = np.array([result.n_epochs if minibatch else result.n_iter], dtype=np.int32)
        self.optimality_ = {
            "grad_norm": result.grad_norm,
            "n_iter": result.n_iter,
            "converged": result.converged,
            "stop_reason": result.stop_reason,
            "tol": float(self.tol),
        }
        self.loss_curve_ = result.history["loss"]
        if not result.converged:
            warn_not_converged(solver.get("solver", self.solver if isinstance(self.solver, str) else "optax"),
                               result)
        return self

    def _set_coefficients(self, W: np.ndarray, b: np.ndarray | None, dtype=np.float64) -> None:
        """``coef_`` and ``intercept_`` (scikit-learn's layout, in ``dtype``) from (D, K) weights
        and a bias; they are the model from then on (predictions read them)."""
        coef, intercept = public_coefficients(W, b)
        self.coef_, self.intercept_ = coef.astype(dtype), intercept.astype(dtype)

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (D, K), b (K,)) in float64 from ``coef_`` and ``intercept_`` — whatever was
        written to them since the fit. A binary model's scores are (0, w·x + b), whose softmax
        is the logistic model's."""
        coef = self.coef_.toarray() if _sparse.is_sparse(self.coef_) else self.coef_  # (after sparsify())
        coef = np.asarray(coef, np.float64)
        intercept = np.broadcast_to(np.asarray(self.intercept_, np.float64), (coef.shape[0],))
        if len(self.classes_) == 2:
            return (np.stack([np.zeros(coef.shape[1]), coef[0]], axis=1),
                    np.array([0.0, intercept[0]]))
        return coef.T, intercept

    def sparsify(self) -> SoftmaxRegression:
        """``coef_`` as a scipy.sparse CSR matrix, as scikit-learn's ``sparsify`` (predictions
        are unchanged); :meth:`densify` turns it back."""
        import scipy.sparse as sp

        check_is_fitted(self)
        self.coef_ = sp.csr_matrix(self.coef_)
        return self

    def densify(self) -> SoftmaxRegression:
        """``coef_`` as a dense array again (after :meth:`sparsify`)."""
        check_is_fitted(self)
        if _sparse.is_sparse(self.coef_):
            self.coef_ = self.coef_.toarray()
        return self

    def objective(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """scikit-learn's objective ``C Σ sₙℓₙ + ½‖coef_‖²`` at the fitted coefficients (``Σ sₙℓₙ``
        for C = inf)."""
        check_is_fitted(self)
        y = np.asarray(y)
        ids = np.searchsorted(self.classes_, y)
        log_p = self.predict_log_proba(X)
        s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        data = -np.sum(s * log_p[np.arange(len(y)), ids])
        if not np.isfinite(self.C):
            return float(data)
        coef = self.coef_.toarray() if _sparse.is_sparse(self.coef_) else np.asarray(self.coef_, np.float64)
        return float(self.C * data + 0.5 * np.sum(coef**2))

    # --- prediction ---------------------------------------------------------------------

    def _input_dtypes(self):
        """float32 data stays float32 for a float32 model (no float64 copy); else float64."""
        return [np.float32, np.float64] if self.dtype == "float32" else np.float64

    def _raw_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) acting on raw features: standardisation folded in, as in the fit."""
        W, b = self._coefficients()
        if not (self.standardize and getattr(self, "mean_", None) is not None):
            return W, b
        W = W / self.scale_[:, None]
        return W, b - self.mean_ @ W

    def _features(self, X: Any):
        check_is_fitted(self)
        return validate_data(self, X, dtype=self._input_dtypes(), reset=False, accept_sparse="csr")

    def _run(self, probabilities: bool, X):
        """:func:`jsoftmax.predict_proba` (or ``predict``) on the raw features with the folded
        coefficients, in the model's dtype, as NumPy (a large X is read in place)."""
        X = self._features(X)
        W, b = self._raw_coefficients()
        with enable_x64(self.dtype == "float64"):
            dtype = jnp.dtype(self.dtype)
            X = X.astype(dtype) if _sparse.is_sparse(X) else np.asarray(X, dtype)
            return host_predictions(Params(np.asarray(W, dtype), np.asarray(b, dtype)), X,
                                    probabilities=probabilities)

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores XW + b, shape (N, K); for binary problems w·x + b, shape (N,)."""
        X = self._features(X)  # checks fitted-ness first
        W, b = self._raw_coefficients()
        scores = np.asarray(X @ W) + b
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (N, K), columns in the order of ``classes_``."""
        return self._run(True, X).astype(np.float64)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities, computed stably from the scores."""
        X = self._features(X)  # checks fitted-ness first
        X = X.astype(np.float64) if _sparse.is_sparse(X) else np.asarray(X, np.float64)
        W, b = self._raw_coefficients()
        z = np.asarray(X @ W) + b
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row, as labels from ``classes_``."""
        ids = self._run(False, X)  # checks fitted-ness first
        return self.classes_[ids]

    # --- persistence --------------------------------------------------------------------

    def save(self, path: str, *, metadata: dict | None = None) -> None:
        """Write the fitted model to ``path`` atomically: an ``.npz`` of plain arrays (no pickle)
        with JSON metadata, an array manifest and a SHA-256 checksum; an existing file keeps its
        permissions. A custom optax solver is stored as ``"lbfgs"`` (code is never stored).
        ``metadata``: a JSON object kept with the model (the CLI records how the training
        file's columns were read), given back by :meth:`load` as ``file_metadata_``."""
        check_is_fitted(self)
        classes = np.asarray(self.classes_)
        classes_kind = "object" if classes.dtype == object else "array"
        if classes.dtype == object:
            if not all(isinstance(c, str) for c in classes):
                raise TypeError("only numeric, boolean or string class labels can be saved; got "
                                f"{sorted({type(c).__name__ for c in classes})}.")
            classes = classes.astype(str)
        W, b = self._coefficients()
        arrays = {"W": W, "classes": classes}
        if self.fit_intercept:
            arrays["b"] = b
        if self.standardize:
            arrays["mean"], arrays["scale"] = self.mean_, self.scale_
        if getattr(self, "feature_names_in_", None) is not None:
            arrays["feature_names_in"] = np.asarray(self.feature_names_in_).astype(str)
        params = self.get_params()
        if not isinstance(params["solver"], str):
            params["solver"] = "lbfgs"  # a custom optax transformation cannot be stored
        weights = params.pop("class_weight")
        params = {name: _json_value(name, value) for name, value in params.items()}
        params["class_weight"] = (weights if weights is None or isinstance(weights, str) else
                                  [[_json_value("class_weight key", k), _json_value(f"class_weight[{k!r}]", v)]
                                   for k, v in weights.items()])
        meta = {
            "format": MODEL_FORMAT,
            "estimator": type(self).__name__,
            "params": params,
            "n_features_in": int(self.n_features_in_),
            "n_iter": int(self.n_iter_[0]),
            # How predictions give the labels back (Python strings from an object array) and
            # the dtype of coef_ (float32 for float32 data).
            "classes_kind": classes_kind,
            "coef_dtype": np.dtype(self.coef_.dtype).name,
            "metadata": {} if metadata is None else metadata,
            "optimality": {k: _json_value(f"optimality_[{k!r}]", v) for k, v in self.optimality_.items()},
        }
        _checkpoint.atomic_save_npz(path, arrays, dict(meta, kind="model"))

    @classmethod
    def load(cls, path: str) -> SoftmaxRegression:
        """Load a model written by :meth:`save`, never executing code from the file.

        The whole file is validated first — the checksum (format 2), every array's dtype,
        shape and finiteness against the metadata, the classes, the scaling and the
        hyperparameters — and any failure is one ``ValueError`` naming the file.
        """
        arrays, meta = _checkpoint.load_npz(path, kind="model", require_checksum=False)
        try:
            return cls._from_file(arrays, meta)
        except (ValueError, TypeError, KeyError) as err:
            detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{path}: invalid model file: {detail}") from None

    @classmethod
    def _from_file(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> SoftmaxRegression:
        fmt = meta.get("format")
        if fmt not in (1, MODEL_FORMAT):
            raise ValueError(f"unsupported model format {fmt!r} (this jsoftmax reads formats 1 and {MODEL_FORMAT}).")
        if fmt >= 2 and _checkpoint.CHECKSUM_KEY not in meta:
            raise ValueError("a format-2 model must carry a checksum.")
        params = meta["params"]
        if not isinstance(params, dict) or set(params) != set(cls().get_params()):
            raise ValueError(f"hyperparameters {sorted(params) if isinstance(params, dict) else params!r} "
                             f"are not those of {cls.__name__} ({sorted(cls().get_params())}).")
        params = dict(params)
        if isinstance(params["class_weight"], list):
            params["class_weight"] = {k: v for k, v in params["class_weight"]}
        elif isinstance(params["class_weight"], dict):  # format 1 stringified the keys
            params["class_weight"] = None
        model = cls(**params)
        model._check_params()
        d = meta["n_features_in"]
        if not (isinstance(d, int) and not isinstance(d, bool) and d >= 1):
            raise ValueError(f"n_features_in must be a positive int; found {d!r}.")
        W, classes = arrays["W"], arrays["classes"]
        if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "biuU" and not (
                classes.dtype.kind == "f" and np.all(np.isfinite(classes))):
            raise ValueError(f"classes must be a 1-D array of at least 2 numbers, booleans or strings; "
                             f"found {classes.dtype} of shape {classes.shape}.")
        if not np.array_equal(np.unique(classes), classes):
            raise ValueError("classes must be sorted and distinct (as np.unique gives them); "
                             f"found {classes.tolist()[:10]}.")
        k = len(classes)
        _check_array("W", W, (d, k))
        b = arrays.get("b")
        if model.fit_intercept != (b is not None):
            raise ValueError(f"fit_intercept={model.fit_intercept} but the file "
                             f"{'has no' if b is None else 'has an'} intercept array b.")
        if b is not None:
            _check_array("b", b, (k,))
        if model.standardize:
            _check_array("mean", arrays["mean"], (d,))
            _check_array("scale", arrays["scale"], (d,))
            if np.any(arrays["scale"] <= 0):
                raise ValueError("scale must be positive (it divides the features).")
        elif "mean" in arrays or "scale" in arrays:
            raise ValueError("scaling arrays are present but standardize=False.")
        names = arrays.get("feature_names_in")
        if names is not None and (names.dtype.kind != "U" or names.shape != (d,) or len(set(names.tolist())) != d):
            raise ValueError(f"feature_names_in must be {d} distinct strings; found {names.dtype} {names.shape}.")
        unexpected = set(arrays) - {"W", "b", "classes", "mean", "scale", "feature_names_in"}
        if unexpected:
            raise ValueError(f"unexpected arrays {sorted(unexpected)}.")
        n_iter, optimality = meta.get("n_iter", 0), meta.get("optimality", {})
        if not (isinstance(n_iter, int) and n_iter >= 0) or not isinstance(optimality, dict):
            raise ValueError(f"n_iter must be an int ≥ 0 and optimality an object; found {n_iter!r}, {optimality!r}.")
        classes_kind, coef_dtype = meta.get("classes_kind", "array"), meta.get("coef_dtype", "float64")
        file_metadata = meta.get("metadata", {})
        if not isinstance(file_metadata, dict):
            raise ValueError(f"metadata must be a JSON object; found {type(file_metadata).__name__}.")
        if classes_kind not in ("array", "object") or (classes_kind == "object" and classes.dtype.kind != "U"):
            raise ValueError(f"classes_kind must be 'array', or 'object' for string classes; found {classes_kind!r}.")
        if coef_dtype not in ("float32", "float64"):
            raise ValueError(f"coef_dtype must be 'float32' or 'float64'; found {coef_dtype!r}.")
        model.classes_ = classes.astype(object) if classes_kind == "object" else classes
        model._set_coefficients(W.astype(np.float64), None if b is None else b.astype(np.float64), coef_dtype)
        model.n_features_in_ = d
        if names is not None:
            model.feature_names_in_ = names.astype(object)
        if model.standardize:
            model.mean_, model.scale_ = arrays["mean"].astype(np.float64), arrays["scale"].astype(np.float64)
        model.n_iter_ = np.array([n_iter], dtype=np.int32)
        model.file_metadata_ = file_metadata
        model.optimality_ = optimality
        model.loss_curve_ = []
        return model


def _check_array(name: str, value: np.ndarray, shape: tuple[int, ...]) -> None:
    if value.dtype.kind != "f" or value.shape != shape:
        raise ValueError(f"{name} must be a float array of shape {shape}; found {value.dtype} {value.shape}.")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} holds NaN or infinite values.")


def _json_value(name: str, value: Any) -> Any:
    """A hyperparameter or report value as JSON: numpy scalars (as GridSearchCV passes them)
    become Python numbers; anything that JSON cannot hold faithfully is a ``TypeError``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # reports only (a NaN gradient norm); hyperparameters are checked finite
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save `{name}` = {value!r} ({type(value).__name__}): model files store "
                    "numbers, strings, booleans and None.")
