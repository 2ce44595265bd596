"""Input validation, done in Python before anything is traced.

Three layers:

* **Conversion** (:func:`as_array`): inputs that are not JAX arrays are converted once —
  big-endian arrays swapped, object arrays of numbers turned into numbers — and copied to the
  device, the copy complete before the call returns, so a caller may change its NumPy array as
  soon as a call returns. float64 data while JAX's x64 mode is off is computed in float32, as
  JAX does, with one :class:`PrecisionWarning` per process.
* **Shapes and dtypes** (:func:`prepare_problem`) are static, so they are always
  checked, eagerly, and raise ``ValueError`` / ``TypeError`` naming the argument (as the
  calling function names it, :class:`ArgNames`), what was expected and what arrived.
* **Values** (labels in range, probability rows, finite X, non-negative weights,
  at least one counted row) need data. :func:`check_values` computes a small summary and,
  when the data is concrete, raises a ``ValueError`` at once. When the data is traced (the
  call sits inside the user's own ``jit``/``vmap``/``scan``), the checks would be a host
  callback in every step of the compiled program; they are off there unless
  ``JSOFTMAX_CHECK_TRACED=1`` (:func:`traced_checks_enabled`), which makes the same summary
  feed a ``jax.debug.callback`` that raises when the program runs (a
  ``jax.errors.JaxRuntimeError`` carrying the same message). Pass ``check_values=False`` to
  skip the value checks on inputs you have already validated.
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _aot, _inplace, _layouts, _sparse
from ._compat import is_tracer
from ._types import Params

_FLOAT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64)


class Problem(NamedTuple):
    """Validated, array-converted inputs of one risk evaluation (a sparse X arrives as a host
    :class:`~jsoftmax._sparse.CSR`, laid out for the engine once the plan is known)."""

    W: jax.Array
    b: jax.Array | None
    X: Any
    labels: jax.Array
    sample_weight: jax.Array | None
    soft: bool  # labels are (N, K) probability rows rather than (N,) class ids


class ArgNames(NamedTuple):
    """How a public function calls its arguments, for messages that name them."""

    W: str = "params.W"
    b: str = "params.b"
    X: str = "X"
    labels: str = "labels"


RISK_NAMES = ArgNames()  # risk, value_and_grad, hvp, fit, predictions
HEAD_NAMES = ArgNames(W="w", b="bias", X="x")  # linear_cross_entropy(x, w, labels, bias=...)


class PrecisionWarning(UserWarning):
    """float64 input computed in float32 because JAX's x64 mode is off."""


_narrowing_warned = False  # one PrecisionWarning per process


def traced_checks_enabled() -> bool:
    """Whether value checks run inside the caller's ``jit`` (``JSOFTMAX_CHECK_TRACED=1``).

    Off by default: a check inside a compiled step is a host callback per step, which costs a
    training loop on an accelerator more than a bad label would (see the README's "Bad
    input"). Read when a function is traced, so set it before the first call."""
    return os.environ.get(TRACED_CHECKS_ENV, "").strip().lower() in ("1", "true", "on", "yes")


TRACED_CHECKS_ENV = "JSOFTMAX_CHECK_TRACED"


def host_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array of numbers in native byte order (``x`` itself when it is one).

    Big-endian arrays are swapped and object arrays holding numbers converted, once; strings,
    dates, ragged lists or objects that are not numbers are a ``TypeError`` naming ``name``."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}: {err}") from None
    if a.dtype == object:
        try:
            a = np.array(a.tolist())
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` is an object array that does not hold numbers: {err}") from None
    if not (a.dtype.kind in "biufc" or jnp.issubdtype(a.dtype, jnp.inexact)):
        raise TypeError(f"`{name}` must hold numbers; got an array of dtype {a.dtype}"
                        + (" (objects that are not numbers)." if a.dtype == object else "."))
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def as_array(x: Any, name: str, *, warn: bool = False) -> jax.Array:
    """``x`` as a JAX array on the default device. A JAX array (or tracer) is returned as it
    is; anything else is converted once (:func:`host_array`) and copied, the copy complete
    before this returns, so the caller may change its array as soon as a call returns.
    ``warn``: the array sets the computation's precision (X, the parameters), so float64 data
    narrowed to float32 gets a :class:`PrecisionWarning`."""
    if isinstance(x, jax.Array) or is_tracer(x):
        return x
    a = host_array(x, name)
    if warn:
        warn_if_narrowed(a.dtype, name)
    return _inplace.private_copy(a)


def warn_if_narrowed(dtype, name: str) -> None:
    """One :class:`PrecisionWarning` per process when float64 data will be computed in float32
    because JAX's x64 mode is off (jsoftmax follows JAX's dtype rules and says so)."""
    global _narrowing_warned
    dtype = np.dtype(dtype)
    if _narrowing_warned or dtype.kind not in "fc" or jax.dtypes.canonicalize_dtype(dtype) == dtype:
        return
    _narrowing_warned = True
    warnings.warn(
        f"`{name}` is {dtype.name}, but JAX's x64 mode is off, so jsoftmax computes in "
        f"{jax.dtypes.canonicalize_dtype(dtype).name} (about 7 significant digits). For "
        "float64, enable x64 first (jax.config.update('jax_enable_x64', True), or a "
        "`with jax.enable_x64():` block); pass float32 data to silence this. Shown once.",
        PrecisionWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The warnings stack level of the first frame outside the jsoftmax package."""
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    return level


def _require_float(x: jax.Array, name: str) -> None:
    if x.dtype not in [jnp.dtype(d) for d in _FLOAT_DTYPES]:
        raise TypeError(
            f"`{name}` must have a floating dtype (bfloat16, float16, float32 or float64); "
            f"got {x.dtype}."
        )


def split_params(params: Any, names: ArgNames = RISK_NAMES) -> tuple[jax.Array, jax.Array | None]:
    """Return ``(W, b)`` from a ``Params`` or a bare ``W`` array."""
    if isinstance(params, Params):
        W, b = params.W, params.b
    elif isinstance(params, (tuple, list, dict)):
        if names is HEAD_NAMES:
            raise TypeError(f"`{names.W}` must be a (D, K) array; got a {type(params).__name__}.")
        raise TypeError(
            "`params` must be a jsoftmax.Params(W, b) or a bare W array of shape "
            f"(n_features, n_classes); got a {type(params).__name__}."
        )
    else:
        W, b = params, None
    W = as_array(W, names.W, warn=True)
    if W.ndim != 2:
        raise ValueError(
            f"`{names.W}` must be 2-D with shape (n_features, n_classes); got shape {W.shape}."
        )
    _require_float(W, names.W)
    if W.shape[1] < 2:
        raise ValueError(
            f"`{names.W}` must have at least 2 classes (columns); got shape {W.shape}."
        )
    if b is not None:
        b = as_array(b, names.b, warn=True)
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"`{names.b}` must have shape (n_classes,) = ({W.shape[1]},) to match `{names.W}`; "
                f"got {b.shape}."
            )
        if b.dtype != W.dtype:
            raise TypeError(f"`{names.b}` dtype must match {names.W} ({W.dtype}); got {b.dtype}.")
    return W, b


def check_direction(V: Any, params: Any, W: jax.Array, b: jax.Array | None
                    ) -> tuple[jax.Array, jax.Array | None]:
    """A direction ``V`` for a Hessian-vector product: the structure, shapes and dtype of
    ``params`` (a :class:`Params` with ``b`` exactly when ``params`` has one, or a bare array)."""
    if isinstance(params, Params):
        if not isinstance(V, Params):
            raise TypeError(f"`V` must be a jsoftmax.Params like `params`; got {type(V).__name__}.")
        VW, Vb = V.W, V.b
        if (Vb is None) != (b is None):
            raise ValueError(f"`V.b` must be {'an array of shape ' + str(b.shape) if b is not None else 'None'} "
                             f"like `params.b`; got {'None' if Vb is None else 'an array'}.")
        names = ("V.W", "V.b")
    else:
        if isinstance(V, (Params, tuple, list, dict)):
            raise TypeError(f"`V` must be a (D, K) array like the bare `params`; got {type(V).__name__}.")
        VW, Vb, names = V, None, ("V", None)
    out = []
    for value, like, name in ((VW, W, names[0]), (Vb, b, names[1])):
        if value is None:
            out.append(None)
            continue
        value = as_array(value, name)
        if value.shape != like.shape:
            raise ValueError(f"`{name}` must have the shape of the parameters, {like.shape}; got {value.shape}.")
        _require_float(value, name)
        if value.dtype != like.dtype:
            raise TypeError(f"`{name}` dtype must match the parameters ({like.dtype}); got {value.dtype}.")
        out.append(value)
    return out[0], out[1]


def prepare_features(params: Any, X: Any, keep_host: bool = False, names: ArgNames = RISK_NAMES
                     ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Validate ``params`` and ``X`` (shape, dtype, agreement); return ``W, b, X``. A sparse
    ``X`` (scipy.sparse, BCOO, BCSR) comes back as a canonical host CSR (see ``_sparse``);
    with ``keep_host`` a NumPy X of a dtype JAX keeps stays on the host (for ``_inplace``)."""
    W, b = split_params(params, names)
    if isinstance(X, _sparse.ProcessRows):  # this process's sparse rows (checked where laid out)
        pass
    elif _sparse.is_sparse(X):
        X = _sparse.as_csr(X, names.X)
    elif not (isinstance(X, jax.Array) or is_tracer(X)):
        X = host_array(X, names.X)
        if not (keep_host and X.dtype.kind == "f" and jax.dtypes.canonicalize_dtype(X.dtype) == X.dtype):
            X = as_array(X, names.X, warn=True)
    if X.ndim != 2:
        raise ValueError(f"`{names.X}` must be 2-D with shape (n_samples, n_features); got shape {X.shape}.")
    _require_float(X, names.X)
    if X.shape[0] == 0:
        raise ValueError(f"`{names.X}` has no rows (n_samples = 0); at least one sample is needed.")
    if W.shape[0] != X.shape[1]:
        raise ValueError(
            f"`{names.W}` must have shape (n_features, n_classes) = ({X.shape[1]}, K) to match "
            f"`{names.X}`; got {W.shape}."
        )
    if W.dtype != X.dtype:
        raise TypeError(
            f"`{names.W}` dtype must match `{names.X}` dtype {X.dtype}; got {W.dtype}. Cast one of them."
        )
    return W, b, X


def prepare_problem(
    params: Any,
    X: Any,
    labels: Any,
    sample_weight: Any,
    l2: Any,
    label_smoothing: Any,
    ignore_index: Any,
    keep_host: bool = False,
    names: ArgNames = RISK_NAMES,
) -> Problem:
    """Validate everything static about a risk evaluation; see the module docstring."""
    W, b, X = prepare_features(params, X, keep_host, names)
    n, k = X.shape[0], W.shape[1]

    labels = _class_ids_if_integer(labels, k)
    if jnp.issubdtype(labels.dtype, jnp.bool_):
        raise TypeError("`labels` must be integer class ids or float probability rows; got bool.")
    if jnp.issubdtype(labels.dtype, jnp.integer):
        soft = False
        if labels.ndim != 1:
            raise ValueError(
                f"integer `labels` must have shape (n_samples,) = ({n},); got shape {labels.shape}."
            )
        if labels.shape[0] != n:
            raise ValueError(
                f"`labels` must have shape (n_samples,) = ({n},) to match `{names.X}`; got {labels.shape}."
            )
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        soft = True
        if labels.ndim == 1:
            raise TypeError(
                f"`labels` is a 1-D float array ({labels.dtype}); class ids must be integers. "
                "Cast them with .astype(int), or pass (n_samples, n_classes) probability rows."
            )
        if labels.shape != (n, k):
            raise ValueError(
                f"probability `labels` must have shape (n_samples, n_classes) = ({n}, {k}); "
                f"got {labels.shape}."
            )
    else:
        raise TypeError(f"`labels` must be integer or floating; got {labels.dtype}.")

    if sample_weight is not None:
        sample_weight = _weights(sample_weight, n)

    check_scalar(l2, "l2", low=0.0, high=None)
    check_scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
        raise TypeError(f"`ignore_index` must be a Python int; got {ignore_index!r}.")
    if not _INT32.min <= ignore_index <= _INT32.max:
        raise ValueError(f"`ignore_index` must fit in int32 like the class ids; got {ignore_index}.")
    return Problem(W, b, X, labels, sample_weight, soft)


def _weights(sample_weight: Any, n: int) -> jax.Array:
    """Validated (N,) sample weights on the device. Weights given on the host are divided by
    their maximum first when some are subnormal (below the dtype's smallest normal number): a
    device that flushes subnormals to zero would otherwise drop them (the weighted mean is the
    same for any common scale)."""
    if not (isinstance(sample_weight, jax.Array) or is_tracer(sample_weight)):
        w = host_array(sample_weight, "sample_weight")
        if w.dtype.kind == "f" and w.size and np.all(np.isfinite(w)) and np.all(w >= 0):
            tiny = np.finfo(jax.dtypes.canonicalize_dtype(w.dtype)).tiny
            if np.any((w > 0) & (w < tiny)):
                w = (w.astype(np.float64) / w.max()).astype(w.dtype)
        sample_weight = w
    sample_weight = as_array(sample_weight, "sample_weight")
    if sample_weight.shape != (n,):
        raise ValueError(
            f"`sample_weight` must have shape (n_samples,) = ({n},); got {sample_weight.shape}."
        )
    if not (jnp.issubdtype(sample_weight.dtype, jnp.floating)
            or jnp.issubdtype(sample_weight.dtype, jnp.integer)):
        raise TypeError(f"`sample_weight` must be real numbers; got {sample_weight.dtype}.")
    return sample_weight


_INT32 = np.iinfo(np.int32)


def _class_ids_if_integer(labels: Any, n_classes: int) -> jax.Array:
    """Integer labels as int32 (int64 under x64 stays int64), so that comparisons with
    ``ignore_index`` and the class iota never wrap: uint8 labels compared with -100 would read
    it as 156, and a uint8 iota over K > 256 classes would repeat. Wider unsigned or int64 ids
    that do not fit int32 are out of any class range and are refused before the cast."""
    on_device = isinstance(labels, jax.Array) or is_tracer(labels)
    if not on_device:
        labels = host_array(labels, "labels")
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iu":
        return as_array(labels, "labels")
    if on_device:
        if dtype == np.int32 or dtype == np.int64:
            return labels
        if dtype.itemsize <= 2:
            return labels.astype(jnp.int32)
        if is_tracer(labels):
            raise TypeError(f"`labels` of dtype {dtype} inside a traced function cannot be checked to "
                            "fit int32; pass int32 class ids.")
        labels = np.asarray(labels)
    if dtype.itemsize > 2 and labels.size and (labels.max() > _INT32.max or labels.min() < _INT32.min):
        bad = int(labels.max()) if labels.max() > _INT32.max else int(labels.min())
        raise ValueError(f"`labels` must be class ids in [0, {n_classes}) or ignore_index; got {bad}, "
                         "which does not even fit int32.")
    return _inplace.private_copy(labels.astype(np.int32, copy=False))


def check_scalar(value: Any, name: str, low: float, high: float | None) -> None:
    """A real scalar option in [low, high). A traced value (under vmap/jit) cannot be read here."""
    if is_tracer(value):
        return  # a traced hyper-parameter (e.g. under vmap); its range cannot be read
    arr = np.asarray(value)
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"`{name}` must be a real scalar; got {value!r}.")
    v = float(arr)
    interval = f"[{low}, {'inf' if high is None else high})"
    if not np.isfinite(v) or v < low or (high is not None and v >= high):
        raise ValueError(f"`{name}` must lie in {interval}; got {v}.")


def check_chunk(value: Any, name: str) -> int | None:
    """A chunk size is None (automatic) or a positive Python int."""
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive int or None; got {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int or None; got {value}.")
    return int(value)


def check_softcap(value: Any) -> float | None:
    """The logit soft-cap: None, or a finite Python/NumPy real c > 0 (static: it is a model
    constant, and the compiled program depends on it)."""
    if value is None:
        return None
    if is_tracer(value):
        raise TypeError("`softcap` must be a concrete number (it is static); got a traced value.")
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype == bool or not np.issubdtype(arr.dtype, np.floating) and \
            not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`softcap` must be a positive real number or None; got {value!r}.")
    cap = float(arr)
    if not np.isfinite(cap) or cap <= 0:
        raise ValueError(f"`softcap` must be a finite number > 0 or None; got {cap}.")
    return cap


def check_flag(value: Any, name: str) -> bool:
    """A boolean option (static): a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False; got {value!r}.")
    return bool(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """A string option among ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def is_active(value: Any) -> bool:
    """Static flag: does this scalar option change the program (traced counts as active)?"""
    return is_tracer(value) or float(value) != 0.0


# --------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------

_SOFT_ROW_SUM_TOL = {2: 2e-2, 4: 1e-4, 8: 1e-6}  # by itemsize: 16-bit, float32, float64


# Inputs up to this size on a CPU are checked by NumPy where they lie: a summary program would
# cost more to load and dispatch (in a fresh process, and even warm) than to read them.
HOST_CHECK_BYTES = 4 * 2**20


def _summary(xp, x_finite, labels, sample_weight, *, n_classes, soft, ignore_index) -> dict:
    """A few scalars that say whether the data is valid (no N-sized output), computed with the
    array module ``xp``: ``jax.numpy`` inside the jitted summary, NumPy for small host data."""
    n = labels.shape[0]
    summary = {"x_finite": x_finite}
    if soft:
        y = labels.astype(xp.float32 if labels.dtype.itemsize < 4 else labels.dtype)
        row_sum = xp.sum(y, axis=1)
        row_err = xp.where(xp.isfinite(row_sum), xp.abs(row_sum - 1), xp.inf)
        bad_row = (row_err > _SOFT_ROW_SUM_TOL[labels.dtype.itemsize]) | xp.any(y < 0, axis=1)
        counted = xp.ones((n,), bool)
    else:
        counted = labels != ignore_index
        bad_row = counted & ((labels < 0) | (labels >= n_classes))
    summary["n_bad_rows"] = xp.sum(bad_row)
    first = xp.argmax(bad_row)
    # Reductions, not indexing: they work for inputs of any sharding.
    at_first = (xp.arange(n) == first)
    row_value = xp.sum(labels.astype(xp.float32), axis=1) if soft else labels
    summary["first_bad_row"] = first
    summary["first_bad_value"] = xp.sum(xp.where(at_first, row_value, 0))
    if sample_weight is None:
        summary["weights_ok"] = xp.asarray(True)
        summary["any_weight"] = xp.any(counted)
    else:
        w = sample_weight
        summary["weights_ok"] = xp.all(xp.isfinite(w) & (w >= 0))
        # "Some counted row has weight > 0", asked of each weight in its own dtype: a sum in
        # float32 would call 1e-50 weights zero and 1e38 weights infinite.
        summary["any_weight"] = xp.any(counted & (w > 0))
    return summary


@partial(jax.jit, static_argnames=("n_classes", "soft", "ignore_index"))
def _value_summary(X, labels, sample_weight, *, n_classes, soft, ignore_index):
    """:func:`_summary` in one fused pass. ``X`` None: its values were checked elsewhere (a
    sparse X, on the host)."""
    # Σ 0·X is one fused reduction (NaN when any value is not finite); all(isfinite(X)) would
    # make XLA on CPU materialise an N×D boolean mask first.
    x_finite = jnp.array(True) if X is None else jnp.isfinite(_layouts.nonfinite_marker(X))
    return _summary(jnp, x_finite, labels, sample_weight, n_classes=n_classes, soft=soft,
                    ignore_index=ignore_index)


def _host_views(*arrays) -> list | None:
    """NumPy views of small arrays that lie on the host (NumPy, or one CPU device), else None."""
    views, size = [], 0
    for a in arrays:
        if a is None:
            views.append(None)
            continue
        if isinstance(a, jax.Array):
            devices = a.sharding.device_set
            if len(devices) != 1 or next(iter(devices)).platform != "cpu":
                return None
        elif not isinstance(a, np.ndarray):
            return None
        size += a.size * a.dtype.itemsize
        if size > HOST_CHECK_BYTES:
            return None
        views.append(np.asarray(a))
    return views


def host_finite(x: np.ndarray) -> bool:
    # max and min propagate NaN and show ±inf, without an N×D temporary.
    return x.size == 0 or bool(np.isfinite(x.max()) and np.isfinite(x.min()))


@jax.jit
def _params_summary(W, b, options):
    """Finiteness of the parameters and the ranges of traced options (run inside the program)."""
    finite = jnp.all(jnp.isfinite(W)) & (True if b is None else jnp.all(jnp.isfinite(b)))
    ok = {name: (value >= low) & (value < high) for name, (value, low, high) in options.items()}
    return {"params_finite": finite, **ok}


def _raise_if_bad_params(summary: dict, *, options: dict, names: ArgNames = RISK_NAMES) -> None:
    s = {key: np.asarray(value) for key, value in summary.items()}
    if not s.pop("params_finite").all():
        what = "`params` contain NaN or inf (W or b)" if names is RISK_NAMES else \
            f"`{names.W}` or `{names.b}` contain NaN or inf"
        raise ValueError(f"{what}; the loss and its gradient would be "
                         "NaN. Check the initialisation or the optimizer's step size.")
    for name, ok in s.items():
        if not ok.all():
            low, high = options[name]
            raise ValueError(f"`{name}` must lie in [{low}, {'inf' if high == np.inf else high}); "
                             "got a traced value outside it.")


def _raise_if_invalid(summary: dict, *, soft: bool, n_classes: int, ignore_index: int,
                      x_name: str = "X", require_counted: bool = True) -> None:
    s = {key: np.asarray(value) for key, value in summary.items()}
    if not s["x_finite"].all():
        raise ValueError(f"`{x_name}` contains NaN or inf; clean or impute the features first.")
    if (s["n_bad_rows"] > 0).any():
        n_bad = int(s["n_bad_rows"].max())
        row = int(s["first_bad_row"].ravel()[0])
        if soft:
            raise ValueError(
                f"probability `labels` must be rows of non-negative entries summing to 1; "
                f"{n_bad} row(s) are not (first: row {row}, which sums to "
                f"{float(s['first_bad_value'].ravel()[0]):.6g})."
            )
        raise ValueError(
            f"`labels` must be class ids in [0, {n_classes}) or ignore_index={ignore_index}; "
            f"{n_bad} are not (first: row {row} has label {int(s['first_bad_value'].ravel()[0])})."
        )
    if not s["weights_ok"].all():
        raise ValueError("`sample_weight` must be finite and non-negative.")
    if require_counted and not s["any_weight"].all():
        raise ValueError(
            "no sample counts towards the risk: every label equals ignore_index="
            f"{ignore_index} or every counted row has weight 0."
        )


def check_params(W, b, *, names: ArgNames = RISK_NAMES, **options: tuple[Any, float, float]) -> None:
    """NaN/inf in W or b, and traced scalar options out of range, raise ``ValueError``: now when
    everything is concrete; inside the caller's ``jit`` at run time, when
    :func:`traced_checks_enabled` (otherwise not at all).

    ``options``: name → (value, low, high) for the range [low, high); concrete values are
    checked before tracing by :func:`check_scalar`, so only traced ones are passed on.
    """
    traced = {name: (jnp.asarray(v), lo, hi) for name, (v, lo, hi) in options.items() if is_tracer(v)}
    bounds = {name: (lo, hi) for name, (_, lo, hi) in traced.items()}
    if any(is_tracer(a) for a in (W, b)) or traced:
        if traced_checks_enabled():
            summary = _params_summary(W, b, traced)
            jax.debug.callback(partial(_raise_if_bad_params, options=bounds, names=names), summary)
    elif (views := _host_views(W, b)) is not None:
        finite = all(v is None or host_finite(v) for v in views)
        _raise_if_bad_params({"params_finite": finite}, options=bounds, names=names)
    else:
        with jax.ensure_compile_time_eval():
            summary = _aot.call(_params_summary, (W, b, {}), {})
        _raise_if_bad_params(jax.device_get(summary), options=bounds, names=names)


def check_sparse_values(X: _sparse.CSR, name: str = "X") -> None:
    """A sparse X's stored values must be finite (checked on the host, where they are)."""
    bad = ~np.isfinite(X.data)
    if bad.any():
        entry = int(np.argmax(bad))
        row = int(np.searchsorted(X.indptr, entry, side="right") - 1)
        raise ValueError(f"sparse `{name}` stores {int(bad.sum())} NaN or inf value(s) (first: row {row}, "
                         f"column {int(X.indices[entry])}, value {X.data[entry]}); clean or impute the "
                         "features first.")


def check_values(problem: Problem, ignore_index: int, *, names: ArgNames = RISK_NAMES,
                 require_counted: bool = True) -> None:
    """Raise ``ValueError`` now (concrete data), or at run time (traced data, when
    :func:`traced_checks_enabled`); see the module doc. ``require_counted``: refuse concrete
    data in which no row counts (every label ignored or every weight 0); traced data never is
    (a fully padded batch inside a training step has the loss 0, not an error)."""
    X, labels, sample_weight = problem.X, problem.labels, problem.sample_weight
    kwargs = dict(soft=problem.soft, n_classes=problem.W.shape[1], ignore_index=ignore_index)
    report = dict(kwargs, x_name=names.X, require_counted=require_counted)
    if isinstance(X, _sparse.CSR):
        check_sparse_values(X, names.X)
        X = None
    elif isinstance(X, _sparse.ProcessRows):  # checked by every process at once when laid out
        X = None
    if any(is_tracer(a) for a in (X, labels, sample_weight)):
        if traced_checks_enabled():
            summary = _value_summary(X, labels, sample_weight, **kwargs)
            jax.debug.callback(partial(_raise_if_invalid, **dict(report, require_counted=False)), summary)
    elif (views := _host_views(X, labels, sample_weight)) is not None:
        x, y, w = views
        summary = _summary(np, True if x is None else host_finite(x), y, w, **kwargs)
        _raise_if_invalid(summary, **report)
    else:
        # Concrete data, possibly closed over inside the caller's jit: evaluate now, raise now.
        with jax.ensure_compile_time_eval():
            summary = _aot.call(_value_summary, (X, labels, sample_weight), kwargs)
        _raise_if_invalid(jax.device_get(summary), **report)


@jax.jit
def _nonfinite_marker(X):
    """0 when every value of X is finite, NaN otherwise: one fused reduction over X, dense,
    read in place or in host memory (``_layouts.nonfinite_marker``)."""
    return _layouts.nonfinite_marker(X)


def check_finite_features(X: Any, name: str = "X") -> None:
    """NaN or inf in the features to predict on raise ``ValueError`` (as a fit would): on the
    host for small or sparse X, by one reduction on the device otherwise; inside the caller's
    ``jit`` only when :func:`traced_checks_enabled`."""
    if isinstance(X, _sparse.CSR):
        check_sparse_values(X, name)
        return
    if is_tracer(X):
        if traced_checks_enabled():
            jax.debug.callback(partial(_raise_if_not_finite, name=name), jnp.isfinite(_layouts.nonfinite_marker(X)))
        return
    if (views := _host_views(X)) is not None:
        finite = host_finite(views[0])
    else:
        with jax.ensure_compile_time_eval():
            marker = _aot.call(_nonfinite_marker, (X,), {})
        finite = bool(np.isfinite(jax.device_get(marker)))
    _raise_if_not_finite(finite, name=name)


def _raise_if_not_finite(finite, *, name: str) -> None:
    if not bool(np.asarray(finite)):
        raise ValueError(f"`{name}` contains NaN or inf; clean or impute the features first.")
