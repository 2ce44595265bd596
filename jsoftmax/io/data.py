"""Data: scikit-learn's bundled datasets and loaders for CSV, NPZ, LIBSVM/svmlight and MNIST IDX.

Every loader returns ``(X, y)`` with ``X`` a float64 array (N, D) — a ``scipy.sparse`` CSR matrix
for LIBSVM/svmlight files, which are sparse by nature — and ``y`` an array (N,) of labels
(numbers or strings). A malformed file raises ``ValueError`` naming the file and the
line (text formats) or byte offset (IDX).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import dataclasses
import gzip
import itertools
import re
import math
import os
import struct
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("digits", "iris", "wine", "breast_cancer")


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One of scikit-learn's bundled real datasets (no download): digits, iris, wine, breast_cancer."""
    from sklearn import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return np.asarray(X, np.float64), np.asarray(y)


COMPRESSIONS = (".gz", ".bz2")


def _stem(name: str) -> str:
    """A file name without its compression suffix (.gz, .bz2)."""
    name = name.lower()
    for suffix in COMPRESSIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _kind(path: Path) -> str:
    stem = _stem(path.name)
    if "idx" in stem or stem.endswith("-ubyte"):
        return "idx"
    if stem.endswith(".npz") and stem == path.name.lower():
        return "npz"
    if stem.endswith((".svm", ".svmlight", ".libsvm")):
        return "svmlight"
    if stem.endswith((".csv", ".tsv", ".txt")):
        return "tsv" if stem.endswith(".tsv") else "csv"
    raise ValueError(
        f"{path}: unknown file type; expected .csv, .tsv, .txt, .npz, .svm/.svmlight/.libsvm "
        "or MNIST IDX (*-idx3-ubyte), text formats optionally .gz or .bz2."
    )


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a data file.")
    return path


def load_file(path: str | os.PathLike, *, label_column: str | int | None = None,
              labels_path: str | os.PathLike | None = None, n_features: int | None = None):
    """Load by file type: .csv/.tsv/.txt, .npz, .svm/.svmlight/.libsvm (sparse X), MNIST IDX; text
    formats raw, .gz or .bz2. ``n_features``: the width a model expects, for LIBSVM files (whose
    width is otherwise their largest index)."""
    X, y, _ = read_file(path, label_column=label_column, labels_path=labels_path, n_features=n_features)
    return X, y


def read_file(path: str | os.PathLike, *, label_column: str | int | None = None,
              labels_path: str | os.PathLike | None = None, n_features: int | None = None
              ) -> tuple[Any, np.ndarray, Reading]:
    """:func:`load_file`, and the :class:`Reading` that says how the file was read."""
    path = _existing(path)
    kind = _kind(path)
    if kind == "idx":
        return (*load_idx(path, labels_path), Reading("idx"))
    if kind == "npz":
        return (*load_npz(path), Reading("npz"))
    if kind == "svmlight":
        X, y, zero_based = _read_svmlight(path, n_features, None)
        return X, y, Reading("svmlight", zero_based=zero_based)
    return read_csv(path, label_column=-1 if label_column is None else label_column,
                    delimiter="\t" if kind == "tsv" else ",")


def read_like(path: str | os.PathLike, reading: Reading | None, n_features: int, *,
              label_column: str | int | None = None, labels_path: str | os.PathLike | None = None,
              require_labels: bool = False) -> tuple[Any, np.ndarray | None]:
    """Features (N, ``n_features``) and, when present, labels of a file read the way the model's
    training file was (``reading``; None for models that did not record it: CSV columns are then
    taken by position, with or without a last label column). Any file whose columns cannot be
    matched to the model's is an error that says what was expected."""
    path = _existing(path)
    kind = _kind(path)
    if kind in ("csv", "tsv"):
        like = reading if reading is not None and reading.kind in ("csv", "tsv") else Reading(kind)
        X, y, _ = read_csv(path, label_column=label_column, delimiter="\t" if kind == "tsv" else ",",
                           like=like, n_features=n_features)
    elif kind == "npz":
        X, y = load_npz(path, require_labels=require_labels)
    elif kind == "svmlight":
        zero_based = reading.zero_based if reading is not None and reading.kind == "svmlight" else None
        X, y, _ = _read_svmlight(path, n_features, zero_based)
    else:
        X, y = load_idx(path, labels_path)
    if X.shape[1] != n_features:
        raise ValueError(f"{path}: the model expects {n_features} features; the file has {X.shape[1]}.")
    if require_labels and y is None:
        raise ValueError(f"{path}: no label column to evaluate against (give --label-column).")
    return X, y


def load_features(path: str | os.PathLike, n_features: int, *, label_column: str | int | None = None,
                  labels_path: str | os.PathLike | None = None) -> np.ndarray:
    """Features (N, n_features) to predict on, read by position (see :func:`read_like`)."""
    return read_like(path, None, n_features, label_column=label_column, labels_path=labels_path)[0]


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _lines(path: Path, handle) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary handle, each line decoded as UTF-8 (a leading byte-order
    mark is dropped), so that decoding and decompression failures name the file and the line."""
    line_no = 0
    try:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start + 1} of the line); save the file as UTF-8.") from None
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}, after line {line_no}: cannot decompress: {err}") from None


_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)\Z")


def labels_as_written(texts: list[str]) -> np.ndarray:
    """Labels exactly as written: int64 when every one is an integer written plainly (no
    sign, zeros or point that its value would lose), else the strings."""
    texts = [t.strip() for t in texts]
    if texts and all(_INTEGER.match(t) for t in texts):
        values = [int(t) for t in texts]
        if all(-2**63 <= v < 2**63 for v in values):
            return np.asarray(values, np.int64)
    return np.asarray(texts, dtype=str)


def _parse_label(text: str):
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    if not math.isfinite(value):
        return text.strip()
    return int(value) if value.is_integer() else value


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    with _open_binary(path) as handle:
        reader = csv.reader((line for _, line in _lines(path, handle)), delimiter=delimiter)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    yield reader.line_num, row
        except csv.Error as err:
            raise ValueError(f"{path}, line {reader.line_num}: {err}") from None


HEADER_LOOKAHEAD = 100


def _looks_like_header(first: list[str], following: list[list[str]], index: int | None) -> bool:
    """Whether the first row names the columns (see :func:`load_csv`)."""
    features = [c for j, c in enumerate(first) if j != index]
    if any(not _is_number(c) for c in features):
        return True
    if len(first) >= 3 and following and all(_is_number(c) for c in first):
        numbers = [float(c) for c in first]
        if numbers in (list(range(len(first))), list(range(1, len(first) + 1))):
            return True  # every column named by its number, 0..W−1 or 1..W (as pandas writes them)
    if index is not None and not _is_number(first[index]) and following:
        return all(len(row) > index and _is_number(row[index]) for row in following)
    return False


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a data file's columns became X and y, kept in a model file so that new files are
    read the same way (:func:`read_like`).

    Attributes:
      kind: "csv", "tsv", "svmlight", "npz", "idx" or "dataset".
      label_column: CSV: the label's column index in the training file (None: no labels).
      header: CSV: the training file's first row named its columns.
      columns: CSV with a header: every column's name, the label's included.
      zero_based: LIBSVM: the training file's feature indices started at 0 (else at 1).
    """

    kind: str
    label_column: int | None = None
    header: bool = False
    columns: tuple[str, ...] | None = None
    zero_based: bool | None = None

    @property
    def feature_names(self) -> list[str] | None:
        if self.columns is None:
            return None
        return [name for j, name in enumerate(self.columns) if j != self.label_column]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "columns": None if self.columns is None else list(self.columns)}

    @classmethod
    def from_dict(cls, value: Any) -> Reading:
        """A Reading from a model file's metadata, every field checked (``ValueError``)."""
        if not isinstance(value, dict) or set(value) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"the file's data reading is not a record of {sorted(f.name for f in dataclasses.fields(cls))}.")
        kind, label, header, columns, zero = (value[k] for k in ("kind", "label_column", "header", "columns", "zero_based"))
        if kind not in ("csv", "tsv", "svmlight", "npz", "idx", "dataset") or not isinstance(header, bool) \
                or not (label is None or isinstance(label, int) and not isinstance(label, bool) and label >= 0) \
                or not (zero is None or isinstance(zero, bool)) \
                or not (columns is None or isinstance(columns, list) and all(isinstance(c, str) for c in columns)
                        and len(set(columns)) == len(columns) and (label is None or label < len(columns))):
            raise ValueError(f"the file's data reading is invalid: {value!r}.")
        return cls(kind, label, header, None if columns is None else tuple(columns), zero)


def load_csv(path: str | os.PathLike, *, label_column: str | int | None = -1, header: bool | None = None,
             delimiter: str = ",") -> tuple[np.ndarray, np.ndarray | None]:
    """Features and labels from a delimited UTF-8 text file (optionally .gz or .bz2).

    Args:
      label_column: the label column, by name (needs a header) or index (negative from the end),
        or None for a file of features only (labels come back as None).
      header: True, False, or None to detect: the first row is a header when a feature cell is
        not a number, when its label cell is text while the next rows' labels are numbers, or
        when its W ≥ 3 cells are exactly 0..W−1 or 1..W (columns named by number, as pandas
        writes them) and rows follow. Pass ``header`` when a file defeats the rule.

    Empty lines are skipped; a byte-order mark is ignored; an empty label, a non-finite or
    non-numeric feature, a ragged row or non-UTF-8 bytes are errors naming the line. Rows are
    parsed as they are read, so memory stays about 8 bytes per value. Labels are read as
    written (see the module doc).
    """
    X, y, _ = read_csv(path, label_column=label_column, header=header, delimiter=delimiter)
    return X, y


def read_csv(path: str | os.PathLike, *, label_column: str | int | None = -1, header: bool | None = None,
             delimiter: str = ",", like: Reading | None = None, n_features: int | None = None
             ) -> tuple[np.ndarray, np.ndarray | None, Reading]:
    """:func:`load_csv`, and how the file was read. With ``like`` (a model's training file's
    :class:`Reading`) the columns are the model's: by name when this file and the training
    file have headers — in any order, the label column optional, any other column an error —
    or by position otherwise (``n_features`` columns, or one more holding the label where the
    training file held it). ``label_column`` then overrides where the label is."""
    path = _existing(path)
    rows = _csv_rows(path, delimiter)
    lookahead = list(itertools.islice(rows, HEADER_LOOKAHEAD + 1))
    if not lookahead:
        raise ValueError(f"{path}: the file is empty.")
    first = lookahead[0][1]
    width = len(first)
    names = [c.strip() for c in first]
    following = [r for _, r in lookahead[1:]]
    if like is None:
        index, header = _label_index(path, names, label_column, header, following, first)
        features = [j for j in range(width) if j != index]
        if width - (index is not None) < 1:
            raise ValueError(f"{path}: no feature columns (the file has {width} column).")
    else:
        index, header, features = _columns_like(path, like, names, first, following, label_column, header,
                                                n_features)
    values, labels, n = array("d"), [], 0
    for line, row in itertools.chain(lookahead[1:] if header else lookahead, rows):
        if len(row) != width:
            raise ValueError(f"{path}, line {line}: expected {width} columns, found {len(row)} (ragged rows).")
        if index is not None:
            if not row[index].strip():
                raise ValueError(f"{path}, line {line}, column {index + 1}: empty label.")
            labels.append(row[index])
        for j in features:
            cell = row[j]
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{path}, line {line}, column {j + 1}: "
                                 f"non-numeric feature value {cell!r}.") from None
            if not math.isfinite(value):
                raise ValueError(f"{path}, line {line}, column {j + 1}: feature value {cell!r} is not finite.")
            values.append(value)
        n += 1
    if not n:
        raise ValueError(f"{path}: no data rows after the header.")
    X = np.frombuffer(values, np.float64).reshape(n, len(features)).copy()
    reading = Reading("tsv" if delimiter == "\t" else "csv", index, bool(header),
                      tuple(names) if header else None) if like is None else like
    return X, None if index is None else labels_as_written(labels), reading


def _label_index(path, names, label_column, header, following, first) -> tuple[int | None, bool]:
    """The label's column index (None: no labels) and whether the first row is a header."""
    width = len(names)
    if isinstance(label_column, str):
        header = True if header is None else header
        if not header or label_column not in names:
            raise ValueError(f"{path}: no label column named {label_column!r}"
                             + (f"; columns are {names}." if header else " (the file has no header)."))
        index = names.index(label_column)
    elif label_column is None:
        index = None
    else:
        index = int(label_column)
        if not -width <= index < width:
            raise ValueError(f"{path}: label column {index} is out of range for {width} columns.")
        index %= width
    if header is None:
        header = _looks_like_header(first, following, index)
    if header and len(set(names)) != len(names):
        raise ValueError(f"{path}: the header names a column twice: {sorted({n for n in names if names.count(n) > 1})}.")
    return index, header


def _columns_like(path, like: Reading, names, first, following, label_column, header, n_features):
    """(label index or None, header, feature columns in the model's order) of a file read for a
    model whose training file was read as ``like``."""
    width = len(names)
    model_names = like.feature_names
    if n_features is None:
        n_features = len(model_names) if model_names is not None else width - (like.label_column is not None)
    if header is None:
        by_position = like.label_column if like.label_column is not None and width == n_features + 1 else None
        header = (model_names is not None and set(model_names) <= set(names)) or \
            _looks_like_header(first, following, width - 1 if by_position is None and width > n_features
                               else by_position)
    if header and model_names is not None:  # matched by name
        if len(set(names)) != width:
            raise ValueError(f"{path}: the header names a column twice: {sorted({n for n in names if names.count(n) > 1})}.")
        label_name = None if like.label_column is None else like.columns[like.label_column]
        if label_column is not None:
            label_name = label_column if isinstance(label_column, str) else names[int(label_column)]
        missing = [n for n in model_names if n not in names]
        unknown = [n for n in names if n not in model_names and n != label_name]
        if missing or unknown:
            raise ValueError(f"{path}: the columns do not match the model's by name (missing {missing}, not the "
                             f"model's {unknown}); the model's features are {model_names}"
                             + ("" if label_name is None else f" and its label column {label_name!r}") + ".")
        index = names.index(label_name) if label_name in names else None
        return index, True, [names.index(n) for n in model_names]
    # By position, as the training file was laid out (a header row, when there is one, skipped).
    if label_column is not None:
        index, _ = _label_index(path, names, label_column, False, following, first)
    elif width == n_features:
        index = None
    elif width == n_features + 1:
        index = like.label_column if like.label_column is not None and like.label_column < width else width - 1
    else:
        raise ValueError(f"{path}: the model expects {n_features} feature columns (or {n_features + 1} with "
                         f"the label column); the file has {width}.")
    features = [j for j in range(width) if j != index]
    if len(features) != n_features:
        raise ValueError(f"{path}: the model expects {n_features} features; the file has {len(features)}.")
    return index, bool(header), features


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_npz(path: str | os.PathLike, *, require_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays ``X`` (N, D) and ``y`` (N,) from an .npz file (parsed without pickle and without
    allocating more than its members hold; see ``jsoftmax.io.files.read_npy_members``)."""
    from .files import read_npy_members

    path = _existing(path)
    try:
        data = read_npy_members(path, allow_compressed=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is an unreadable file
        raise ValueError(f"{path}: not a readable .npz file: {type(err).__name__}: {err}") from None
    wanted = ("X", "y") if require_labels else ("X",)
    missing = [k for k in wanted if k not in data]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(data)}.")
    X, y = data["X"], data.get("y")
    if X.ndim != 2 or (y is not None and (y.ndim != 1 or len(X) != len(y))):
        raise ValueError(f"{path}: X must be (N, D) and y (N,); got {X.shape} and {None if y is None else y.shape}.")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: X must be numeric; got {X.dtype}.")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: X holds NaN or infinite values.")
    return X.astype(np.float64), y


# A LIBSVM file's width is its largest feature index. A stray index of 10⁹ would make a model
# with 10⁹ rows of weights, so without ``n_features`` the width may be at most this many times
# the stored entries (or WIDTH_FLOOR, whichever is larger).
WIDTH_GROWTH = 64
WIDTH_FLOOR = 2**20


def load_svmlight(path: str | os.PathLike, *, n_features: int | None = None,
                  zero_based: bool | None = None):
    """LIBSVM/svmlight text (``label index:value ...`` per line, ``#`` comments, ``qid:`` ignored;
    ``.gz``/``.bz2`` too) as ``(X, y)`` with X a ``scipy.sparse`` CSR matrix: never densified.

    Parsed by scikit-learn's compiled ``load_svmlight_file``. Where it refuses a file, or
    accepts non-finite values, jsoftmax's own line scanner names the file, the line and the
    problem. Lines whose indices are not increasing (unsorted or repeated: scikit-learn refuses
    them) are parsed by that scanner instead, repeated indices summed as scipy sums duplicates.
    Indices are one-based unless ``zero_based`` (None: zero-based if any index 0 appears).
    Without ``n_features`` the width may be at most 64× the stored entries (or 2²⁰).
    """
    X, y, _ = _read_svmlight(_existing(path), n_features, zero_based)
    return X, y


def _read_svmlight(path: Path, n_features: int | None, zero_based: bool | None):
    """(X, y, zero_based): :func:`load_svmlight` and the index base it used — the given one, or
    for None the file's own (zero-based when an index 0 appears), which a model records so that
    a file without index 0 is not read one column off for it."""
    from sklearn.datasets import load_svmlight_file

    try:
        # Raw indices (zero-based), so that the base is decided here and known.
        X, y = load_svmlight_file(str(path), dtype=np.float64,
                                  zero_based=True if zero_based is None else zero_based)
    except (ValueError, OSError, EOFError, zlib.error) as err:
        if "sorted and unique" not in str(err):
            _scan_svmlight(path, n_features, zero_based)  # raises naming the line
            raise ValueError(f"{path}: {err}") from None
        X, y, zero_based = _scan_svmlight(path, n_features, zero_based)
    else:
        if zero_based is None:
            zero_based = X.nnz > 0 and int(X.indices.min()) == 0
            if not zero_based and X.nnz:
                X = _csr(X.data, X.indices - 1, X.indptr, (X.shape[0], max(X.shape[1] - 1, 0)))
        if n_features is not None:
            if X.shape[1] > n_features:
                raise ValueError(f"{path}: feature index {X.shape[1] - 1 + (not zero_based)} exceeds "
                                 f"n_features={n_features}.")
            X = _csr(X.data, X.indices, X.indptr, (X.shape[0], n_features))
    if X.shape[0] == 0:
        raise ValueError(f"{path}: no samples.")
    if not np.all(np.isfinite(X.data)) or not np.all(np.isfinite(y)):
        _scan_svmlight(path, n_features, zero_based)
        raise ValueError(f"{path}: non-finite values.")  # pragma: no cover - the scan names the line
    _check_width(path, X, n_features)
    y = np.asarray(y)
    if y.dtype.kind == "f" and np.all(y == np.round(y)) and np.all(np.abs(y) < 2**53):
        y = y.astype(np.int64)  # integral labels read as floats: class ids
    return X, y, bool(zero_based)


def _csr(data, indices, indptr, shape):
    import scipy.sparse as sp

    return sp.csr_matrix((data, indices, indptr), shape=shape)


def _check_width(path: Path, X, n_features: int | None) -> None:
    width = X.shape[1]
    if n_features is None and width > max(WIDTH_FLOOR, WIDTH_GROWTH * X.nnz):
        raise ValueError(f"{path}: the largest feature index, about {width}, would make a model of {width} "
                         f"features for {X.nnz} stored values; pass n_features if that is really meant.")


def describe(X) -> dict:
    """Size of a feature matrix for reports: rows, features, and for a sparse X its stored
    entries, density and CSR bytes."""
    n, d = X.shape
    if not hasattr(X, "nnz"):
        return {"n_samples": int(n), "n_features": int(d), "sparse": False, "bytes": int(X.nbytes)}
    csr = X.tocsr()
    return {"n_samples": int(n), "n_features": int(d), "sparse": True, "nnz": int(csr.nnz),
            "density": float(csr.nnz / max(n * d, 1)),
            "bytes": int(csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes)}


def _scan_svmlight(path: Path, n_features: int | None, zero_based: bool | None):
    """jsoftmax's own LIBSVM reader: every line checked, errors naming the file and line; returns
    (X CSR, y) with repeated indices summed."""
    import scipy.sparse as sp

    labels, rows, columns, values = [], array("q"), array("q"), array("d")
    line_of_row = []
    with _open_binary(path) as handle:
        for line_no, line in _lines(path, handle):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            label, *pairs = line.split()
            row = len(labels)
            for pair in pairs:
                index, sep, value = pair.partition(":")
                if index == "qid":
                    continue
                try:
                    if not sep or not index.isdigit():
                        raise ValueError
                    number = float(value)
                except ValueError:
                    raise ValueError(f"{path}, line {line_no}: malformed feature {pair!r} "
                                     "(expected index:value, the index a non-negative integer).") from None
                if not math.isfinite(number):
                    raise ValueError(f"{path}, line {line_no}: feature {pair!r} is not finite.")
                rows.append(row)
                columns.append(int(index))
                values.append(number)
            parsed = _parse_label(label)
            if isinstance(parsed, str):
                raise ValueError(f"{path}, line {line_no}: the label {label!r} is not a finite number.")
            labels.append(parsed)
            line_of_row.append(line_no)
    if not labels:
        raise ValueError(f"{path}: no samples.")
    columns_np = np.frombuffer(columns, np.int64) if len(columns) else np.zeros(0, np.int64)
    if zero_based is None:
        zero_based = bool(len(columns_np)) and int(columns_np.min()) == 0
    offset = 0 if zero_based else 1
    if len(columns_np) and int(columns_np.min()) < offset:
        bad = int(np.argmin(columns_np))
        raise ValueError(f"{path}, line {line_of_row[rows[bad]]}: feature index {columns[bad]} below {offset} "
                         "(one-based file).")
    width = int(columns_np.max()) - offset + 1 if len(columns_np) else 0
    if n_features is not None:
        if width > n_features:
            raise ValueError(f"{path}: feature index {width - 1 + offset} exceeds n_features={n_features}.")
        width = n_features
    rows_np = np.frombuffer(rows, np.int64) if len(rows) else np.zeros(0, np.int64)
    values_np = np.frombuffer(values, np.float64) if len(values) else np.zeros(0)
    X = sp.csr_matrix((values_np, (rows_np, columns_np - offset)), shape=(len(labels), width))
    X.sum_duplicates()
    return X, np.asarray(labels), zero_based


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One MNIST IDX array (raw, .gz or .bz2): magic 0x0000TTNN, N big-endian dims, then data.

    The header's shape bounds every read: a raw file must be exactly that long (checked
    before reading), and a .gz is decompressed only up to the declared size plus one byte.
    """
    path = Path(path)
    compressed = path.name.lower().endswith(COMPRESSIONS)
    try:
        with _open_binary(path) as handle:
            head = handle.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: truncated at offset {len(head)}: no 4-byte IDX magic number.")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype_code not in _IDX_TYPES or ndim == 0:
                raise ValueError(f"{path}, offset 0: bad IDX magic 0x{head.hex()} "
                                 "(expected 0x0000 then a type byte 08/09/0B/0C/0D/0E and a rank).")
            header = 4 + 4 * ndim
            dims_raw = handle.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(f"{path}: truncated at offset {4 + len(dims_raw)}: header needs {header} bytes.")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = np.dtype(_IDX_TYPES[dtype_code])
            expected = math.prod(dims) * dtype.itemsize
            if not compressed and os.stat(path).st_size - header != expected:
                raise ValueError(f"{path}: data at offset {header} should be {expected} bytes for shape "
                                 f"{dims}; found {os.stat(path).st_size - header} (truncated or padded).")
            data = _read_at_most(handle, expected + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot read IDX data: {err}") from None
    if len(data) != expected:
        raise ValueError(f"{path}: data at offset {header} should be {expected} bytes for shape "
                         f"{dims}; found {'more' if len(data) > expected else len(data)} (truncated or padded).")
    return np.frombuffer(bytes(data), dtype).reshape(dims)


def _read_at_most(handle, limit: int, block: int = 2**20) -> bytearray:
    """Up to ``limit`` bytes, read in blocks, so memory follows the data, not a declared size."""
    out = bytearray()
    while len(out) < limit:
        chunk = handle.read(min(block, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def guessed_labels_path(images_path: str | os.PathLike) -> Path | None:
    """The labels file MNIST names beside an images file (``images-idx3`` → ``labels-idx1``), or
    None for a name without that pattern."""
    images_path = Path(images_path)
    guess = images_path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    return None if guess == images_path.name else images_path.with_name(guess)


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None):
    """MNIST-style images (N, ...) and labels (N,) from two IDX files; X is flattened to (N, D).

    Without ``labels_path`` the labels file is found next to the images by replacing
    ``images-idx3`` with ``labels-idx1`` in the name (the MNIST naming).
    """
    images_path = Path(images_path)
    if labels_path is None:
        labels_path = guessed_labels_path(images_path)
        if labels_path is None:
            raise ValueError(f"{images_path}: give the labels file too (cannot guess its name).")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: expected {len(images)} labels for {images_path}; "
                         f"got shape {labels.shape}.")
    return images.reshape(len(images), -1).astype(np.float64), labels.astype(np.int64)
