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
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _checkpoint, _inplace, _sparse
from ._compat import enable_x64
from ._api import host_predictions
from ._train import fit
from ._types import Params

SOLVERS = ("auto", "lbfgs", "newton-cg", "adam", "sgd")
FULL_BATCH_SOLVERS = ("lbfgs", "newton-cg")
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
    return "newton-cg" if sparse else "lbfgs"


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
      classes_, coef_ ((K, D), or (1, D) for binary), intercept_ ((K,) or (1,)),
      n_features_in_, n_iter_ (shape (1,)), optimality_ (dict: grad_norm, n_iter,
      converged, stop_reason, tol), loss_curve_, mean_ and scale_ (with ``standardize``).

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
        if not (isinstance(self.C, numbers.Real) and self.C > 0 and np.isfinite(self.C)):
            raise ValueError(f"`C` must be a positive finite number; got {self.C!r}.")
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
        if not (isinstance(self.max_iter, numbers.Integral) and self.max_iter > 0):
            raise ValueError(f"`max_iter` must be a positive int; got {self.max_iter!r}.")
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
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=self._input_dtypes(), ensure_min_samples=1,
                             accept_sparse="csr")
        check_classification_targets(y)
        classes, y_ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"`y` needs samples of at least 2 classes; got 1 class: {classes[0]!r}."
            )
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if np.any(sample_weight < 0):
            raise ValueError("`sample_weight` must be non-negative.")
        if self.class_weight is not None:
            weights = compute_class_weight(self.class_weight, classes=classes, y=y)
            sample_weight = sample_weight * weights[y_ids]
        total = float(np.sum(sample_weight))
        if total <= 0:
            raise ValueError("`sample_weight` sums to 0: no sample counts.")

        if self.standardize:
            self.mean_, scale = column_moments(X)
            self.scale_ = np.where(scale > 0, scale, 1.0)
        n_classes, n_features = len(classes), X.shape[1]
        solver = self._optimizer(X.shape[0], n_features, n_classes, _sparse.is_sparse(X))
        binary = n_classes == 2
        l2 = (2.0 if binary else 1.0) / (self.C * total)

        warm = (
            self.warm_start
            and getattr(self, "_W", None) is not None
            and self._W.shape == (n_features, n_classes)
            and np.array_equal(getattr(self, "classes_", None), classes)
        )
        with enable_x64(self.dtype == "float64"):
            dtype = jnp.dtype(self.dtype)
            # NumPy arrays in the fit's dtype: no eager JAX conversion (a program to compile) here.
            W0 = np.asarray(self._W if warm else np.zeros((n_features, n_classes)), dtype)
            b0 = None
            if self.fit_intercept:
                b0 = np.asarray(self._b if warm and self._b is not None else np.zeros(n_classes), dtype)
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
        self._W = np.asarray(result.params.W, np.float64)
        self._b = None if result.params.b is None else np.asarray(result.params.b, np.float64)
        self._set_public_coefficients()
        self.n_iter_ = np.array([result.n_epochs if minibatch else result.n_iter])
        self.optimality_ = {
            "grad_norm": result.grad_norm,
            "n_iter": result.n_iter,
            "converged": result.converged,
            "stop_reason": result.stop_reason,
            "tol": float(self.tol),
        }
        self.loss_curve_ = result.history["loss"]
        return self

    def _set_public_coefficients(self) -> None:
        W, b = self._W, self._b
        if W.shape[1] == 2:  # binomial layout, as scikit-learn
            self.coef_ = (W[:, 1] - W[:, 0])[None, :]
            self.intercept_ = np.array([0.0 if b is None else b[1] - b[0]])
        else:
            self.coef_ = W.T.copy()
            self.intercept_ = np.zeros(W.shape[1]) if b is None else b.copy()

    def objective(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """scikit-learn's objective C Σ sₙℓₙ + ½‖coef_‖² at the fitted coefficients."""
        check_is_fitted(self)
        y = np.asarray(y)
        ids = np.searchsorted(self.classes_, y)
        log_p = self.predict_log_proba(X)
        s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        return float(self.C * np.sum(s * -log_p[np.arange(len(y)), ids]) + 0.5 * np.sum(self.coef_**2))

    # --- prediction ---------------------------------------------------------------------

    def _input_dtypes(self):
        """float32 data stays float32 for a float32 model (no float64 copy); else float64."""
        return [np.float32, np.float64] if self.dtype == "float32" else np.float64

    def _raw_coefficients(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(W, b) acting on raw features: standardisation folded in, as in the fit."""
        if not (self.standardize and getattr(self, "mean_", None) is not None):
            return self._W, self._b
        W = self._W / self.scale_[:, None]
        shift = self.mean_ @ W
        return W, -shift if self._b is None else self._b - shift

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
            b = None if b is None else jnp.asarray(b, dtype)
            X = X.astype(dtype) if _sparse.is_sparse(X) else np.asarray(X, dtype)
            return host_predictions(Params(jnp.asarray(W, dtype), b), X, probabilities=probabilities)

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores XW + b, shape (N, K); for binary problems w·x + b, shape (N,)."""
        X = self._features(X)  # checks fitted-ness first
        W, b = self._raw_coefficients()
        scores = np.asarray(X @ W) + (0 if b is None else b)
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
        z = np.asarray(X @ W) + (0 if b is None else b)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row, as labels from ``classes_``."""
        ids = self._run(False, X)  # checks fitted-ness first
        return self.classes_[ids]

    # --- persistence --------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the fitted model to ``path`` atomically: an ``.npz`` of plain arrays (no pickle)
        with JSON metadata, an array manifest and a SHA-256 checksum; an existing file keeps its
        permissions. A custom optax solver is stored as ``"lbfgs"`` (code is never stored)."""
        check_is_fitted(self)
        classes = np.asarray(self.classes_)
        if classes.dtype == object:
            if not all(isinstance(c, str) for c in classes):
                raise TypeError("only numeric or string class labels can be saved; got "
                                f"{sorted({type(c).__name__ for c in classes})}.")
            classes = classes.astype(str)
        arrays = {"W": self._W, "classes": classes}
        if self._b is not None:
            arrays["b"] = self._b
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
        if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "iuU" and not (
                classes.dtype.kind == "f" and np.all(np.isfinite(classes))):
            raise ValueError(f"classes must be a 1-D array of at least 2 numbers or strings; "
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
        model.classes_, model._W, model._b = classes, W.astype(np.float64), None if b is None else b.astype(np.float64)
        model.n_features_in_ = d
        if names is not None:
            model.feature_names_in_ = names.astype(object)
        if model.standardize:
            model.mean_, model.scale_ = arrays["mean"].astype(np.float64), arrays["scale"].astype(np.float64)
        model._set_public_coefficients()
        model.n_iter_ = np.array([n_iter])
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
