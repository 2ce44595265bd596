"""Model files: a fitted estimator as an ``.npz`` of plain arrays with JSON metadata.

The file holds the weights as the fit sees them — W (D, K), b (K,) — with the classes, the
scaling and the hyperparameters; :func:`public_coefficients` and :func:`model_weights` map
them to and from scikit-learn's ``coef_``/``intercept_``. Writes are atomic and loading runs no
code (:mod:`jsoftmax.io.files`); :func:`load` validates the whole file before it builds a model.
Format 2 adds a checksum, an array manifest and feature names; format 1 still loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _sparse
from . import files

MODEL_FORMAT = 2  # 2: checksum, array manifest, feature names; 1 still loads
ARRAYS = ("W", "b", "classes", "mean", "scale", "feature_names_in")
# Hyperparameters newer than some files: missing from a file, they take their defaults.
ADDED_SINCE = ("devices", "feature_memory", "l1_ratio")


def public_coefficients(W: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``coef_`` (K, D) and ``intercept_`` (K,) of (D, K) weights and a bias;
    for two classes the binomial layout: (1, D) and (1,), w₁ − w₀."""
    if W.shape[1] == 2:
        return (W[:, 1] - W[:, 0])[None, :], np.array([0.0 if b is None else b[1] - b[0]])
    return W.T.copy(), np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64).copy()


def model_weights(coef: Any, intercept: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (D, K), b (K,)) in float64 from ``coef_`` (dense or, after ``sparsify()``, sparse)
    and ``intercept_``. A binary model's scores are (0, w·x + b), whose softmax is the
    logistic model's."""
    coef = np.asarray(coef.toarray() if _sparse.is_sparse(coef) else coef, np.float64)
    intercept = np.broadcast_to(np.asarray(intercept, np.float64), (coef.shape[0],))
    if n_classes == 2:
        return np.stack([np.zeros(coef.shape[1]), coef[0]], axis=1), np.array([0.0, intercept[0]])
    return coef.T, intercept


def save(model: Any, path: str, *, metadata: dict | None = None) -> None:
    """Write the fitted ``model`` (its public attributes and ``get_params()``) to ``path``
    atomically; see ``SoftmaxRegression.save``."""
    classes = np.asarray(model.classes_)
    classes_kind = "object" if classes.dtype == object else "array"
    if classes.dtype == object:
        if not all(isinstance(c, str) for c in classes):
            raise TypeError("only numeric, boolean or string class labels can be saved; got "
                            f"{sorted({type(c).__name__ for c in classes})}.")
        classes = classes.astype(str)
    W, b = model_weights(model.coef_, model.intercept_, len(classes))
    arrays = {"W": W, "classes": classes}
    if model.fit_intercept:
        arrays["b"] = b
    if model.standardize:
        arrays["mean"], arrays["scale"] = model.mean_, model.scale_
    if getattr(model, "feature_names_in_", None) is not None:
        arrays["feature_names_in"] = np.asarray(model.feature_names_in_).astype(str)
    params = model.get_params()
    if not isinstance(params["solver"], str):
        params["solver"] = "lbfgs"  # a custom optax transformation cannot be stored
    params["devices"] = None  # where it was fitted is not part of the model (nor storable)
    params["feature_memory"] = "auto"  # nor where its X lay
    weights = params.pop("class_weight")
    params = {name: json_value(name, value) for name, value in params.items()}
    params["class_weight"] = (weights if weights is None or isinstance(weights, str) else
                              [[json_value("class_weight key", k), json_value(f"class_weight[{k!r}]", v)]
                               for k, v in weights.items()])
    meta = {
        "format": MODEL_FORMAT,
        "estimator": type(model).__name__,
        "params": params,
        "n_features_in": int(model.n_features_in_),
        "n_iter": int(model.n_iter_[0]),
        # How predictions give the labels back (Python strings from an object array) and
        # the dtype of coef_ (float32 for float32 data).
        "classes_kind": classes_kind,
        "coef_dtype": np.dtype(model.coef_.dtype).name,
        "metadata": {} if metadata is None else metadata,
        "optimality": {k: json_value(f"optimality_[{k!r}]", v) for k, v in model.optimality_.items()},
    }
    files.atomic_save_npz(path, arrays, dict(meta, kind="model"))


def load(cls: type, path: str, check_params: Callable[[Any], None]) -> Any:
    """A ``cls`` model from a file :func:`save` wrote, never executing code from it; the whole
    file is validated first (``check_params`` checks the hyperparameters) and any failure is
    one ``ValueError`` naming the file."""
    arrays, meta = files.load_npz(path, kind="model", require_checksum=False)
    try:
        return _from_file(cls, arrays, meta, check_params)
    except (ValueError, TypeError, KeyError) as err:
        detail = f"missing {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path}: invalid model file: {detail}") from None


def _from_file(cls: type, arrays: dict[str, np.ndarray], meta: dict[str, Any], check_params) -> Any:
    fmt = meta.get("format")
    if fmt not in (1, MODEL_FORMAT):
        raise ValueError(f"unsupported model format {fmt!r} (this jsoftmax reads formats 1 and {MODEL_FORMAT}).")
    if fmt >= 2 and files.CHECKSUM_KEY not in meta:
        raise ValueError("a format-2 model must carry a checksum.")
    params = meta["params"]
    if isinstance(params, dict):  # hyperparameters added since the file was written: their defaults
        params = {**{name: value for name, value in cls().get_params().items() if name in ADDED_SINCE},
                  **params}
    if not isinstance(params, dict) or set(params) != set(cls().get_params()):
        raise ValueError(f"hyperparameters {sorted(params) if isinstance(params, dict) else params!r} "
                         f"are not those of {cls.__name__} ({sorted(cls().get_params())}).")
    params = dict(params)
    if isinstance(params["class_weight"], list):
        params["class_weight"] = {k: v for k, v in params["class_weight"]}
    elif isinstance(params["class_weight"], dict):  # format 1 stringified the keys
        params["class_weight"] = None
    model = cls(**params)
    check_params(model)
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
    unexpected = set(arrays) - set(ARRAYS)
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
    coef, intercept = public_coefficients(W.astype(np.float64), None if b is None else b.astype(np.float64))
    model.coef_, model.intercept_ = coef.astype(coef_dtype), intercept.astype(coef_dtype)
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


def json_value(name: str, value: Any) -> Any:
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
