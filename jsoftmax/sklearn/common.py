"""What the two estimators share: the fit preamble, the solver names and the rules of a fit
(row buckets, class and sample weights, the penalty's scale, standardisation's moments), and a
base class with scikit-learn's tags and the declarative hyperparameter check."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, validate_data

from .. import _api, _inplace, _sparse
from ..train import newton_cg, registry
from . import constraints

FULL_BATCH_SOLVERS = tuple(registry.SOLVERS)  # jsoftmax.train's solvers, by name
SOLVERS = ("auto", *FULL_BATCH_SOLVERS, "adam", "sgd")
# Full-batch fits pad the rows up to a bucket (at most 1/8 more, weight 0) so that a new N in the
# same bucket reuses the compiled program, while the padded copy costs little next to a compile:
# up to this much of X (``_rules.json``, with the study that measured both).
ROW_BUCKET_MAX_BYTES = _api.rule("row_bucket")["max_bytes"]


def row_bucket(n: int) -> int:
    """The smallest m·2^e ≥ n with m in 8..15 (eight buckets per doubling), at least 64."""
    if n <= 64:
        return 64
    step = 2 ** (max(n - 1, 1).bit_length() - 4)
    return -(-n // step) * step


def pad_rows(X: np.ndarray, y_ids: np.ndarray, sample_weight: np.ndarray, dtype, multiple: int = 1
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, labels and weights padded with zero-weight rows to :func:`row_bucket` (unchanged when
    the padded X would exceed ``ROW_BUCKET_MAX_BYTES``), and to a ``multiple`` of the rows (the
    number of devices they are split over; this pads a large X too, with one copy). Zero-weight rows leave every sum
    exactly (the engine skips rows whose coefficient is 0), so the fit is the same. A sparse X
    gets empty rows (no stored entries) while its CSR arrays stay within the same bound."""
    n, d = X.shape
    rows = -(-row_bucket(n) // multiple) * multiple
    sparse = _sparse.is_sparse(X)
    dtype = X.dtype if is_half_precision(X) else dtype  # stored in 16 bits: kept so
    size = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) if sparse else rows * d * np.dtype(dtype).itemsize
    if size > ROW_BUCKET_MAX_BYTES:  # a large X: no bucket, only what the devices need (one copy)
        rows = -(-n // multiple) * multiple
    if rows == n:
        return (X.astype(dtype, copy=False) if sparse else np.asarray(X, dtype)), y_ids, sample_weight
    if sparse:
        import scipy.sparse as sp

        padded = sp.vstack([X.astype(dtype), sp.csr_matrix((rows - n, d), dtype=dtype)], format="csr")
    else:
        padded = _inplace.aligned_empty((rows, d), dtype)  # adopted by the device, not copied
        padded[:n] = X
        padded[n:] = 0
    return (padded, np.concatenate([y_ids, np.zeros(rows - n, y_ids.dtype)]),
            np.concatenate([sample_weight, np.zeros((rows - n,) + sample_weight.shape[1:], sample_weight.dtype)]))


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


def choose_solver(n: int, d: int, k: int, batch_size: int | None, sparse: bool = False, *,
                  sharded: bool = False) -> str:
    """The solver ``solver="auto"`` picks: "adam" for minibatches, "newton-cg" for sparse X,
    else "lbfgs".

    On this project's CPU the lean L-BFGS was faster than Newton-CG on every dense problem of
    the fit suite (``benchmarks/results/fit-cpu.md``); Newton-CG needs several times fewer
    outer iterations, but each CG step costs an HVP. The arguments are the problem's shape, so
    that the rule can grow with the benchmarks (e.g. ill-conditioned problems, where
    Newton-CG's iteration count matters most).

    Sparse (text) problems have many features, where L-BFGS's history of 2 × 10 (D, K) arrays
    outgrows the data, and there Newton-CG was faster (``benchmarks/results/sparse-cpu.md``) —
    except when the rows are split over devices (``sharded``), which Newton-CG does not do for a
    sparse X.
    """
    del n, d, k  # no benchmarked dense shape favours Newton-CG by enough to switch yet
    if batch_size is not None:
        return "adam"
    if sparse and not (sharded and not newton_cg.SOLVER.sparse_mesh):
        return newton_cg.SOLVER.name
    return registry.DEFAULT  # (Newton-CG does not split a sparse X over devices)


def column_moments(X: np.ndarray, block_rows: int | None = None,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation in float64, over blocks of rows (default: 2²¹
    float64 values each): no N×D temporary (numpy's ``std`` would build X − mean whole). ``rows``:
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
    """The dtype of ``coef_``: float32 for float32 data, as scikit-learn keeps it, and for data
    stored in 16 bits (the precision its products ran at); else float64."""
    return np.float32 if getattr(X, "dtype", None) == np.float32 or is_half_precision(X) else np.float64


def is_half_precision(X: Any) -> bool:
    """X holds floats stored in 16 bits (bfloat16 or float16): fitted as stored, never widened."""
    dtype = getattr(X, "dtype", None)
    if dtype is None or _sparse.is_sparse(X):
        return False
    dtype = np.dtype(dtype)
    return dtype.itemsize == 2 and (dtype.kind == "f" or dtype.name == "bfloat16")


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


def l1_solver(solver: Any, penalty: str) -> str:
    """The full-batch solver that fits an L1 penalty for the ``solver`` option: ``"auto"`` is the
    registry's first solver that minimises one; any other that cannot (an optax transformation
    included) is refused, naming ``penalty`` (e.g. ``"l1_ratio=0.5"``) and the ones that can."""
    capable = registry.with_l1()
    if isinstance(solver, str) and solver == "auto":
        return capable[0]
    if not (isinstance(solver, str) and solver in capable):
        name = solver if isinstance(solver, str) else "an optax transformation"
        raise ValueError(f"solver={name!r} cannot fit {penalty} (an L1 penalty); "
                         f"use solver='auto' or one of {', '.join(map(repr, capable))}.")
    return solver


def penalty_strength(C: float, total: float, n_classes: int, dtype: str) -> float:
    """The scaled form's L2 strength λ = 1/(C·Σs) (doubled for the binomial model, fitted as
    the symmetric softmax) of scikit-learn's objective C·Σ sₙℓₙ + ½‖W‖²; 0 for C = inf.
    Beyond what ``dtype`` holds (weights summing to ~1e-40 in float32) it is that dtype's
    largest number: the penalty then outweighs the data either way and W is 0."""
    if not np.isfinite(C):
        return 0.0
    return float(min((2.0 if n_classes == 2 else 1.0) / (C * total), float(np.finfo(dtype).max)))


def penalty_strengths(C: float, total: float, n_classes: int, dtype: str, l1_ratio: float) -> tuple[float, float]:
    """(λ, λ₁): the scaled form's L2 and L1 strengths of scikit-learn's elastic net
    C·Σ sₙℓₙ + ρ‖coef‖₁ + (1 − ρ)/2·‖coef‖² (``docs/derivation.md`` §14): λ₁ = ρ/(C·Σs) and λ as
    :func:`penalty_strength` times (1 − ρ). For two classes the binomial coef is w₁ − w₀ of the
    symmetric softmax: ½‖coef‖² = ‖W‖² (λ doubled) while ‖coef‖₁ is the least ‖W‖₁ over the
    softmax's shift (λ₁ as is). (0, 0) for C = inf."""
    if not np.isfinite(C):
        return 0.0, 0.0
    l1 = float(min(l1_ratio / (C * total), float(np.finfo(dtype).max)))
    return (1.0 - l1_ratio) * penalty_strength(C, total, n_classes, dtype), l1


def warn_not_converged(solver: str, result) -> None:
    """scikit-learn's ``ConvergenceWarning`` for a fit that stopped before ``tol``."""
    reason = {"max_iter": "the iteration limit was reached", "max_epochs": "the epoch limit was reached",
              "stalled": "no step decreased the objective further (rounding level)",
              "diverged": "the objective became NaN or infinite"}.get(result.stop_reason, result.stop_reason)
    warnings.warn(f"{solver} failed to converge after {result.n_iter} iteration(s): {reason} "
                  f"(largest gradient entry {result.grad_norm:.3g}). Increase the number of "
                  "iterations (max_iter), or scale the data (standardize=True).",
                  ConvergenceWarning, stacklevel=3)


def as_dtype(X: Any, dtype, *, keep_half: bool = False) -> Any:
    """X (dense or scipy.sparse) in ``dtype``, without a copy when it already is; with
    ``keep_half``, X stored in 16 bits as it is (the device reads it so)."""
    if keep_half and is_half_precision(X):
        return X
    return X.astype(dtype, copy=False) if _sparse.is_sparse(X) else np.asarray(X, dtype)


def input_dtypes(dtype: str):
    """What ``validate_data`` may leave X as: float32 data stays float32 for a float32 model
    (no float64 copy); else float64."""
    return [np.float32, np.float64] if dtype == "float32" else np.float64


def fit_data(estimator, X: Any, y: Any, *, min_samples: int = 1) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The fit preamble both estimators share: X and y validated as scikit-learn validates them
    (setting ``n_features_in_`` and ``feature_names_in_``), y's classes and class ids.
    Returns (X, y, classes, y_ids); fewer than two classes is a ``ValueError``."""
    if is_half_precision(X):
        X, y = half_precision_data(estimator, np.asarray(X), y, min_samples=min_samples)
    else:
        X, y = validate_data(estimator, X, y, dtype=input_dtypes(estimator.dtype), ensure_min_samples=min_samples,
                             accept_sparse="csr")
    check_classification_targets(y)
    classes, y_ids = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"`y` needs samples of at least 2 classes; got 1 class: {classes[0]!r}.")
    return X, y, classes, y_ids


def half_precision_data(estimator, X: np.ndarray, y: Any = None, *, min_samples: int = 1, reset: bool = True):
    """``validate_data`` for X stored in 16 bits, without widening it: scikit-learn checks the
    shape, the feature count and y on X's bits (viewed as uint16: scikit-learn knows no
    bfloat16), and the values are checked here, a non-finite one named by its column
    (features that overflowed float16 when they were saved are inf)."""
    bits = X.view(np.uint16)
    if y is None:
        checked = validate_data(estimator, bits, dtype=None, reset=reset, ensure_all_finite=False,
                                ensure_min_samples=min_samples)
    else:
        checked, y = validate_data(estimator, bits, y, dtype=None, reset=reset, ensure_all_finite=False,
                                   ensure_min_samples=min_samples)
    X = checked.view(X.dtype)
    finite = np.isfinite(X)
    if not finite.all():
        rows, columns = np.nonzero(~finite)
        raise ValueError(f"`X` holds NaN or infinite values: column {int(columns[0])} (row {int(rows[0])}"
                         f"{f' and {len(rows) - 1} more' if len(rows) > 1 else ''}); {X.dtype} features that "
                         "overflowed when they were saved are inf.")
    return X if y is None else (X, y)


def device_mesh(devices: Any):
    """The estimators' ``devices`` as a one-axis ``jax.sharding.Mesh`` (axis ``"data"``: the
    rows are split over it, each step's gradient summed across it), or None for JAX's default
    device. ``devices``: None (the default device), ``"all"`` (every local device), an int n (the
    first n local devices) or a sequence of ``jax.Device`` (one platform, each once)."""
    import jax

    if devices is None:
        return None
    local = jax.local_devices()
    if isinstance(devices, str):
        chosen = local
    elif constraints.is_int(devices):
        if devices > len(local):
            raise ValueError(f"`devices`={devices}, but this process has {len(local)} local device(s).")
        chosen = local[:devices]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("`devices` names no device; give None, 'all', a count or a list of jax devices.")
        strangers = [d for d in chosen if not isinstance(d, jax.Device)]
        if strangers:
            raise TypeError(f"`devices` must hold jax devices (jax.devices()); got {type(strangers[0]).__name__}.")
        platforms = sorted({d.platform for d in chosen})
        if len(platforms) > 1:
            raise ValueError(f"`devices` mixes platforms {platforms}; a fit runs on one.")
        if len(set(chosen)) != len(chosen):
            raise ValueError("`devices` names a device more than once.")
    if len(chosen) == 1 and chosen[0] == jax.devices()[0]:
        return None  # the default device: the single-device path
    return jax.sharding.Mesh(np.array(chosen), ("data",))


def devices_constraint() -> constraints.Constraint:
    return constraints.Constraint(
        lambda v: v is None or v == "all" or (constraints.is_int(v) and v >= 1)
        or (isinstance(v, (list, tuple)) and not isinstance(v, str)),
        "None, 'all', a positive int or a list of jax devices")


# The hyperparameters both estimators take, and what each must be.
SHARED_CONSTRAINTS = {
    "fit_intercept": constraints.boolean(),
    "standardize": constraints.boolean(),
    "class_weight": constraints.Constraint(lambda v: v is None or v == "balanced" or isinstance(v, dict),
                                           "None, 'balanced' or a dict"),
    "dtype": constraints.options("float64", "float32", expected="'float64' or 'float32'"),
    "max_iter": constraints.int_at_least(0, "an int >= 0 (0: return the start)"),
    "tol": constraints.non_negative_real(),
    "devices": devices_constraint(),
}
# The elastic-net mixing ρ of one model.
L1_RATIO = constraints.Constraint(lambda v: constraints.is_real(v) and 0.0 <= float(v) <= 1.0,
                                  "a number in [0, 1] (not NaN)")


class SoftmaxClassifier(ClassifierMixin, BaseEstimator):
    """The two estimators' base: scipy.sparse input accepted as it is (never densified), and
    the hyperparameters checked against ``_parameter_constraints`` before a fit."""

    _parameter_constraints: dict[str, constraints.Constraint] = {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # scipy.sparse X is fitted as it is (never densified)
        return tags

    def _check_params(self) -> None:
        constraints.check_parameters(self)
