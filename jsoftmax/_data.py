"""Data: scikit-learn's bundled datasets and loaders for CSV, NPZ, LIBSVM/svmlight and MNIST IDX.

Every loader returns ``(X, y)`` with ``X`` a float64 array (N, D) and ``y`` an array (N,) of
labels (numbers or strings). A malformed file raises ``ValueError`` naming the file and the
line (text formats) or byte offset (IDX).
"""

from __future__ import annotations

import csv
import gzip
import zipfile
import os
import struct
from pathlib import Path

import numpy as np

DATASETS = ("digits", "iris", "wine", "breast_cancer")


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One of scikit-learn's bundled real datasets (no download): digits, iris, wine, breast_cancer."""
    from sklearn import datasets

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return np.asarray(X, np.float64), np.asarray(y)


def load_file(path: str | os.PathLike, *, label_column: str | int | None = None,
              labels_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load by file type: .csv/.tsv/.txt, .npz, .svm/.svmlight/.libsvm, MNIST IDX (raw or .gz)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if "idx" in stem or stem.endswith("-ubyte"):
        return load_idx(path, labels_path)
    if stem.endswith(".npz"):
        return load_npz(path)
    if stem.endswith((".svm", ".svmlight", ".libsvm")):
        return load_svmlight(path)
    if stem.endswith((".csv", ".tsv", ".txt")):
        return load_csv(path, label_column=-1 if label_column is None else label_column,
                        delimiter="\t" if stem.endswith(".tsv") else ",")
    raise ValueError(
        f"{path}: unknown file type; expected .csv, .tsv, .txt, .npz, .svm/.svmlight/.libsvm "
        "or MNIST IDX (*-idx3-ubyte[.gz])."
    )


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _parse_label(text: str):
    try:
        value = float(text)
    except ValueError:
        return text.strip()
    return int(value) if value.is_integer() else value


def load_csv(path: str | os.PathLike, *, label_column: str | int = -1, header: bool | None = None,
             delimiter: str = ",") -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from a delimited text file.

    Args:
      label_column: the label column, by name (needs a header) or index (negative from the end).
      header: True, False, or None to detect (first row has a non-numeric feature cell).
    """
    path = Path(path)
    with _open_text(path) as handle:
        rows = [(i + 1, row) for i, row in enumerate(csv.reader(handle, delimiter=delimiter)) if row]
    if not rows:
        raise ValueError(f"{path}: the file is empty.")
    first = rows[0][1]
    width = len(first)
    if isinstance(label_column, str):
        header = True if header is None else header
        names = [c.strip() for c in first]
        if not header or label_column not in names:
            raise ValueError(f"{path}: no label column named {label_column!r}"
                             + (f"; columns are {names}." if header else " (the file has no header)."))
        index = names.index(label_column)
    else:
        index = int(label_column)
        if not -width <= index < width:
            raise ValueError(f"{path}: label column {index} is out of range for {width} columns.")
        index %= width
        if header is None:  # a header row has a non-numeric cell where features go
            header = any(not _is_number(c) for j, c in enumerate(first) if j != index)
    data = rows[1:] if header else rows
    if not data:
        raise ValueError(f"{path}: no data rows after the header.")
    X = np.empty((len(data), width - 1))
    labels = []
    for r, (line, row) in enumerate(data):
        if len(row) != width:
            raise ValueError(f"{path}, line {line}: expected {width} columns, found {len(row)} (ragged rows).")
        for c, cell in enumerate(v for j, v in enumerate(row) if j != index):
            try:
                X[r, c] = float(cell)
            except ValueError:
                raise ValueError(f"{path}, line {line}, column {c + (c >= index) + 1}: "
                                 f"non-numeric feature value {cell!r}.") from None
        labels.append(_parse_label(row[index]))
    return X, np.asarray(labels)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``X`` (N, D) and ``y`` (N,) from an .npz file (no pickle)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            missing = [k for k in ("X", "y") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; found {data.files}.")
            X, y = data["X"], data["y"]
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz file: {err}") from None
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: not a readable .npz file: {err}") from None
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{path}: X must be (N, D) and y (N,); got {X.shape} and {y.shape}.")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{path}: X must be numeric; got {X.dtype}.")
    return X.astype(np.float64), y


def load_svmlight(path: str | os.PathLike, *, n_features: int | None = None,
                  zero_based: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM/svmlight text: ``label index:value ...`` per line, ``#`` comments.

    Indices are one-based unless ``zero_based`` (None: zero-based if any index 0 appears).
    """
    path = Path(path)
    labels, entries = [], []
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            label, *pairs = line.split()
            row = []
            for pair in pairs:
                index, sep, value = pair.partition(":")
                try:
                    if not sep or (index == "qid"):
                        raise ValueError
                    row.append((int(index), float(value)))
                except ValueError:
                    raise ValueError(f"{path}, line {line_no}: malformed feature {pair!r} "
                                     "(expected index:value).") from None
            labels.append(_parse_label(label))
            entries.append((line_no, row))
    if not labels:
        raise ValueError(f"{path}: no samples.")
    indices = [i for _, row in entries for i, _ in row]
    if zero_based is None:
        zero_based = bool(indices) and min(indices) == 0
    offset = 0 if zero_based else 1
    width = max((i - offset + 1 for i in indices), default=0)
    if n_features is not None:
        if width > n_features:
            raise ValueError(f"{path}: feature index {width} exceeds n_features={n_features}.")
        width = n_features
    X = np.zeros((len(labels), width))
    for r, (line_no, row) in enumerate(entries):
        for index, value in row:
            if index - offset < 0:
                raise ValueError(f"{path}, line {line_no}: feature index {index} below {offset}.")
            X[r, index - offset] = value
    return X, np.asarray(labels)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One MNIST IDX array (raw or .gz): magic 0x0000TTNN, N big-endian dims, then data."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read IDX data: {err}") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated at offset {len(raw)}: no 4-byte IDX magic number.")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{path}, offset 0: bad IDX magic 0x{raw[:4].hex()} "
                         "(expected 0x0000 then a type byte 08/09/0B/0C/0D/0E and a rank).")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated at offset {len(raw)}: header needs {header} bytes.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: data at offset {header} should be {expected} bytes for shape "
                         f"{dims}; found {len(raw) - header} (truncated or padded).")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None):
    """MNIST-style images (N, ...) and labels (N,) from two IDX files; X is flattened to (N, D).

    Without ``labels_path`` the labels file is found next to the images by replacing
    ``images-idx3`` with ``labels-idx1`` in the name (the MNIST naming).
    """
    images_path = Path(images_path)
    if labels_path is None:
        guess = images_path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
        if guess == images_path.name:
            raise ValueError(f"{images_path}: give the labels file too (cannot guess its name).")
        labels_path = images_path.with_name(guess)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: expected {len(images)} labels for {images_path}; "
                         f"got shape {labels.shape}.")
    return images.reshape(len(images), -1).astype(np.float64), labels.astype(np.int64)
