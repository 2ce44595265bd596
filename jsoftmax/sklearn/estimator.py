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

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _sparse
from .._api import host_predictions
from .._compat import enable_x64
from .._penalty import duality_gap
from .._types import Params
from ..io import model_files
from ..train import fit
from . import constraints
from .common import (FULL_BATCH_SOLVERS, L1_RATIO, SHARED_CONSTRAINTS, SOLVERS, SoftmaxClassifier, as_dtype, choose_solver,
                     coefficient_dtype, column_moments, device_mesh, fit_data, half_precision_data, input_dtypes,
                     is_half_precision, l1_solver, make_optimizer, pad_rows, penalty_strengths, training_weights,
                     warn_not_converged)


def _is_optax(solver: Any) -> bool:
    return hasattr(solver, "init") and hasattr(solver, "update")


class SoftmaxRegression(SoftmaxClassifier):
    """Multinomial logistic regression fitted with Optax and jsoftmax's analytic gradient.

    Parameters follow scikit-learn's ``LogisticRegression`` where they overlap.

    Args:
      C: inverse penalty strength, as in scikit-learn (objective C Σ sₙℓₙ + ½‖W‖² for
        ``l1_ratio=0``); ``np.inf``: no penalty.
      l1_ratio: the elastic-net mixing ρ ∈ [0, 1], as in scikit-learn ≥ 1.8: the objective is
        C Σ sₙℓₙ + ρ‖coef‖₁ + (1 − ρ)/2 ‖coef‖², the intercept never penalised. ρ > 0 fits by
        OWL-QN (``solver="auto"`` or ``"owlqn"``; the other solvers refuse it) to exact zeros,
        and ``tol`` bounds the KKT violation (``optimality_["kkt_violation"]``). Ignored, with a
        warning, when C = inf (no penalty).
      fit_intercept: learn a bias b (not penalised).
      class_weight: None, a dict {class: weight}, or "balanced".
      max_iter: iterations (full batch) or epochs (with ``batch_size``).
      tol: stop when the largest gradient entry of the scaled objective is ≤ tol (with an L1
        penalty: the largest entry of its pseudo-gradient, the KKT violation).
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
      devices: where the fit runs: None (JAX's default device), ``"all"`` (every local device),
        an int n (the first n local devices) or a list of ``jax.Device``. Over several devices
        the rows are split among them (data-parallel: each step's gradient is summed across
        them), padded with zero-weight rows to a multiple of their number; predictions run on
        the default device.
      feature_memory: where X stays during a full-batch fit on one device: ``"device"`` (copied
        to the device whole), ``"host"`` (kept in host memory, its row blocks streamed to the
        device inside the compiled loop: X may be larger than the device) or ``"auto"`` (host
        memory when X and the fit's working set exceed the device's free memory). See
        :func:`jsoftmax.fit`.

    Attributes:
      classes_: the class labels, sorted as ``np.unique`` gives them.
      coef_: (K, D), or (1, D) for two classes (w₁ − w₀); float32 for float32 data. It is the
        model: predictions, warm starts and saving read it (write it to change the model).
      intercept_: (K,), or (1,) for two classes.
      n_features_in_: D.
      n_iter_: (1,) iterations (or epochs with ``batch_size``) of the fit.
      optimality_: dict of grad_norm, n_iter, converged, stop_reason, tol and kkt_violation
        (= grad_norm); for an L1 fit also duality_gap, P − D ≥ 0 in the scaled objective's
        units (``docs/derivation.md`` §14): an upper bound on how far the fit's objective is
        above its minimum.
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
        l1_ratio: float = 0.0,
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
        devices: Any = None,
        feature_memory: str = "auto",
    ):
        self.C = C
        self.l1_ratio = l1_ratio
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
        self.devices = devices
        self.feature_memory = feature_memory

    _parameter_constraints = {
        "C": constraints.positive_real("a positive number (np.inf: no penalty)"),
        "l1_ratio": L1_RATIO,
        "fit_intercept": SHARED_CONSTRAINTS["fit_intercept"],
        "warm_start": constraints.boolean(),
        "standardize": SHARED_CONSTRAINTS["standardize"],
        "learning_rate": constraints.positive_real("a positive finite number", finite=True),
        "batch_size": constraints.optional(constraints.int_at_least(1, ""), "None or a positive int"),
        "random_state": constraints.optional(constraints.Constraint(constraints.is_int, ""), "None or an int"),
        "class_weight": SHARED_CONSTRAINTS["class_weight"],
        "solver": constraints.options(
            *SOLVERS, also=_is_optax,
            message="unknown solver {value!r}; choose one of " + ", ".join(SOLVERS)
                    + " or pass an optax.GradientTransformation."),
        "dtype": SHARED_CONSTRAINTS["dtype"],
        "max_iter": SHARED_CONSTRAINTS["max_iter"],
        "tol": SHARED_CONSTRAINTS["tol"],
        "devices": SHARED_CONSTRAINTS["devices"],
        "feature_memory": constraints.options("auto", "device", "host", expected="'auto', 'device' or 'host'"),
    }

    # --- fitting ------------------------------------------------------------------------

    def _optimizer(self, n: int, d: int, k: int, sparse: bool = False, mesh=None, l1: bool = False) -> dict[str, Any]:
        """``fit``'s solver keywords: ``solver=`` a built-in name or ``optimizer=`` optax's."""
        if l1:  # an L1 penalty: only the solvers that minimise one
            solver = l1_solver(self.solver, f"l1_ratio={self.l1_ratio}")
            if self.batch_size is not None and self.solver != "auto":
                raise ValueError(f"solver={self.solver!r} is full-batch: set batch_size=None.")
            return {"solver": solver}
        if isinstance(self.solver, str):
            solver = (choose_solver(n, d, k, self.batch_size, sparse, sharded=mesh is not None)
                      if self.solver == "auto" else self.solver)
            if solver in FULL_BATCH_SOLVERS:
                if self.batch_size is not None:
                    raise ValueError(f"solver={solver!r} is full-batch: set batch_size=None, or use "
                                     "solver='adam' or 'sgd' for minibatches.")
                return {"solver": solver}
            return {"optimizer": make_optimizer(solver, float(self.learning_rate))}
        if _is_optax(self.solver):
            return {"optimizer": self.solver}
        raise ValueError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)} "
                         "or pass an optax.GradientTransformation.")

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
        X, y, classes, y_ids = fit_data(self, X, y)
        sparse = _sparse.is_sparse(X)
        sample_weight, total = training_weights(self.class_weight, sample_weight, X, y, classes, y_ids)
        if self.standardize:
            self.mean_, scale = column_moments(X)
            self.scale_ = np.where(scale > 0, scale, 1.0)
        n_classes, n_features = len(classes), X.shape[1]
        mesh = device_mesh(self.devices)
        l2, l1 = penalty_strengths(self.C, total, n_classes, self.dtype, self._l1_ratio())
        solver = self._optimizer(X.shape[0], n_features, n_classes, sparse, mesh, l1=l1 > 0)

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
            if minibatch and sparse:
                raise ValueError("`batch_size` (minibatches) is not supported for sparse X; use the "
                                 "full-batch solvers 'lbfgs' or 'newton-cg'.")
            devices = 1 if mesh is None else mesh.size
            if minibatch and devices > 1 and self.batch_size % devices:
                raise ValueError(f"`batch_size`={self.batch_size} must be a multiple of the {devices} `devices`.")
            X_fit, y_fit, w_fit = ((as_dtype(X, dtype, keep_half=True), y_ids, sample_weight)
                                   if minibatch and devices == 1
                                   else pad_rows(X, y_ids, sample_weight, dtype, multiple=devices))
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
                l1=l1,
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
                mesh=mesh,
                data_axis=None if mesh is None else "data",
                feature_memory=self.feature_memory,
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
            # 0 ∈ ∂F: the largest entry of the (pseudo-)gradient, = grad_norm (docs/derivation.md §14)
            "kkt_violation": result.grad_norm,
        }
        if l1 > 0:  # the certificate of an L1 fit: P − D from a dual point (one more pass over X)
            self.optimality_["duality_gap"] = duality_gap(
                result.params.W, result.params.b, X, np.eye(n_classes)[y_ids], sample_weight, l1, l2,
                mean=self.mean_ if self.standardize else None, scale=self.scale_ if self.standardize else None)
        self.loss_curve_ = result.history["loss"]
        if not result.converged:
            warn_not_converged(solver.get("solver", self.solver if isinstance(self.solver, str) else "optax"),
                               result)
        return self

    def _l1_ratio(self) -> float:
        """ρ as the fit uses it: ignored (with a warning) when C = inf, as scikit-learn does."""
        if self.l1_ratio and not np.isfinite(self.C):
            warnings.warn(f"l1_ratio={self.l1_ratio} is ignored: C=inf means no penalty at all.", UserWarning,
                          stacklevel=3)
            return 0.0
        return float(self.l1_ratio)

    def _set_coefficients(self, W: np.ndarray, b: np.ndarray | None, dtype=np.float64) -> None:
        """``coef_`` and ``intercept_`` (scikit-learn's layout, in ``dtype``) from (D, K) weights
        and a bias; they are the model from then on (predictions read them)."""
        coef, intercept = model_files.public_coefficients(W, b)
        self.coef_, self.intercept_ = coef.astype(dtype), intercept.astype(dtype)

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (D, K), b (K,)) in float64 from ``coef_`` and ``intercept_`` — whatever was
        written to them since the fit."""
        return model_files.model_weights(self.coef_, self.intercept_, len(self.classes_))

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
        """scikit-learn's objective ``C Σ sₙℓₙ + ρ‖coef_‖₁ + (1 − ρ)/2‖coef_‖²`` (ρ the
        ``l1_ratio``; ``C Σ sₙℓₙ + ½‖coef_‖²`` for ρ = 0) at the fitted coefficients (``Σ sₙℓₙ``
        for C = inf)."""
        check_is_fitted(self)
        y = np.asarray(y)
        ids = np.searchsorted(self.classes_, y)
        log_p = self.predict_log_proba(X)
        s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        data = -np.sum(s * log_p[np.arange(len(y)), ids])
        if not np.isfinite(self.C):
            return float(data)
        coef = np.asarray(self.coef_.toarray() if _sparse.is_sparse(self.coef_) else self.coef_, np.float64)
        rho = float(self.l1_ratio)
        return float(self.C * data + rho * np.sum(np.abs(coef)) + 0.5 * (1 - rho) * np.sum(coef**2))

    # --- prediction ---------------------------------------------------------------------

    def _raw_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) acting on raw features: standardisation folded in, as in the fit."""
        W, b = self._coefficients()
        if not (self.standardize and getattr(self, "mean_", None) is not None):
            return W, b
        W = W / self.scale_[:, None]
        return W, b - self.mean_ @ W

    def _features(self, X: Any):
        check_is_fitted(self)
        if is_half_precision(X):  # stored in 16 bits: checked without widening
            return half_precision_data(self, np.asarray(X), reset=False)
        return validate_data(self, X, dtype=input_dtypes(self.dtype), reset=False, accept_sparse="csr")

    def _run(self, probabilities: bool, X):
        """:func:`jsoftmax.predict_proba` (or ``predict``) on the raw features with the folded
        coefficients, in the model's dtype, as NumPy (a large X is read in place)."""
        X = self._features(X)
        W, b = self._raw_coefficients()
        with enable_x64(self.dtype == "float64"):
            # X stored in 16 bits is read as stored, with the coefficients in its dtype: the
            # products run as the fit's did (accumulating in float32).
            dtype = X.dtype if is_half_precision(X) else jnp.dtype(self.dtype)
            return host_predictions(Params(np.asarray(W, dtype), np.asarray(b, dtype)), as_dtype(X, dtype),
                                    probabilities=probabilities)

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores XW + b, shape (N, K); for binary problems w·x + b, shape (N,)."""
        X = self._features(X)  # checks fitted-ness first
        W, b = self._raw_coefficients()
        scores = np.asarray(as_dtype(X, np.float32) @ W if is_half_precision(X) else X @ W) + b
        if len(self.classes_) == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (N, K), columns in the order of ``classes_``."""
        return self._run(True, X).astype(np.float64)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities, computed stably from the scores."""
        X = self._features(X)  # checks fitted-ness first
        X = as_dtype(X, np.float64)
        W, b = self._raw_coefficients()
        z = np.asarray(X @ W) + b
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row, as labels from ``classes_``."""
        ids = self._run(False, X)  # checks fitted-ness first
        return self.classes_[ids]

    # --- persistence (jsoftmax.io.model_files) -------------------------------------------

    def save(self, path: str, *, metadata: dict | None = None) -> None:
        """Write the fitted model to ``path`` atomically: an ``.npz`` of plain arrays (no pickle)
        with JSON metadata, an array manifest and a SHA-256 checksum; an existing file keeps its
        permissions. A custom optax solver is stored as ``"lbfgs"`` (code is never stored).
        ``metadata``: a JSON object kept with the model (the CLI records how the training
        file's columns were read), given back by :meth:`load` as ``file_metadata_``."""
        check_is_fitted(self)
        model_files.save(self, path, metadata=metadata)

    @classmethod
    def load(cls, path: str) -> SoftmaxRegression:
        """Load a model written by :meth:`save`, never executing code from the file.

        The whole file is validated first — the checksum (format 2), every array's dtype,
        shape and finiteness against the metadata, the classes, the scaling and the
        hyperparameters — and any failure is one ``ValueError`` naming the file.
        """
        return model_files.load(cls, path, constraints.check_parameters)
