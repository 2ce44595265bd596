"""Loaders for bundled datasets and CSV, NPZ, LIBSVM and MNIST IDX files the tests write."""

import gzip
import struct

import numpy as np
import pytest

from jsoftmax.io import data as loaders


def test_bundled_datasets():
    for name, shape, k in [("digits", (1797, 64), 10), ("iris", (150, 4), 3), ("wine", (178, 13), 3),
                           ("breast_cancer", (569, 30), 2)]:
        X, y = loaders.load_dataset(name)
        assert X.shape == shape and X.dtype == np.float64 and len(np.unique(y)) == k
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of digits, iris, wine, breast_cancer"):
        loaders.load_dataset("mnist")


def test_csv_header_label_by_name_and_index(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,f1,f2\ncat,1,2\ndog,3.5,-4\n")
    X, y = loaders.load_csv(path, label_column="label")
    np.testing.assert_array_equal(X, [[1, 2], [3.5, -4]])
    assert y.tolist() == ["cat", "dog"]
    X0, y0 = loaders.load_csv(path, label_column=0)  # header detected
    np.testing.assert_array_equal(X0, X)
    plain = tmp_path / "plain.csv"
    plain.write_text("1,2,0\n3,4,1\n5,6,1\n")
    X, y = loaders.load_file(plain)  # no header, label last
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 1]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("1\t2\t0\n3\t4\t1\n")
    assert loaders.load_file(tsv)[0].shape == (2, 2)


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        ("1,2,0\n3,4\n", {}, r"bad.csv, line 2: expected 3 columns, found 2 \(ragged rows\)"),
        ("1,2,0\n3,oops,1\n", {}, r"bad.csv, line 2, column 2: non-numeric feature value 'oops'"),
        ("a,b,c\n1,2,0\n", {"label_column": "label"}, r"no label column named 'label'; columns are \['a', 'b', 'c'\]"),
        ("1,2,0\n", {"label_column": 5}, r"label column 5 is out of range for 3 columns"),
        ("", {}, r"bad.csv: the file is empty"),
    ],
)
def test_malformed_csv(tmp_path, text, kwargs, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern):
        loaders.load_csv(path, **kwargs)


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    X, y = loaders.load_file(path)
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 0]
    np.savez(tmp_path / "nox.npz", features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"nox.npz: missing array\(s\) \['X', 'y'\]"):
        loaders.load_npz(tmp_path / "nox.npz")
    np.savez(tmp_path / "ragged.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"X must be \(N, D\) and y \(N,\)"):
        loaders.load_npz(tmp_path / "ragged.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="junk.npz: not a readable .npz file"):
        loaders.load_npz(tmp_path / "junk.npz")


def test_svmlight(tmp_path):
    path = tmp_path / "d.svm"
    path.write_text("# comment\n1 1:0.5 3:2\n2 2:1.5  # trailing comment\n\n1 4:-1\n")
    X, y = loaders.load_file(path)
    np.testing.assert_array_equal(X.toarray(), [[0.5, 0, 2, 0], [0, 1.5, 0, 0], [0, 0, 0, -1]])
    assert y.tolist() == [1, 2, 1]
    zero = tmp_path / "z.libsvm"
    zero.write_text("0 0:1 2:3\n1 1:2\n")
    X, _ = loaders.load_file(zero)  # index 0 present: zero-based
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 3], [0, 2, 0]])
    bad = tmp_path / "bad.svm"
    bad.write_text("1 1:0.5\n0 2=3\n")
    with pytest.raises(ValueError, match=r"bad.svm, line 2: malformed feature '2=3'"):
        loaders.load_svmlight(bad)


def write_idx(path, array, code, compress=False):
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    payload = header + array.astype(dtype).tobytes()
    if compress:
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, 0x08, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
    X, y = loaders.load_file(tmp_path / f"t10k-images-idx3-ubyte{suffix}")  # labels file guessed
    np.testing.assert_array_equal(X, images.reshape(5, 12))
    assert y.tolist() == [3, 1, 4, 1, 5]


def test_malformed_idx(tmp_path):
    bad_magic = tmp_path / "a-images-idx3-ubyte"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"a-images-idx3-ubyte, offset 0: bad IDX magic 0x01020801"):
        loaders.read_idx(bad_magic)
    truncated = tmp_path / "b-images-idx3-ubyte"
    write_idx(truncated, np.zeros((4, 2, 2)), 0x08)
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"data at offset 16 should be 16 bytes for shape \(4, 2, 2\); found 13"):
        loaders.read_idx(truncated)
    short = tmp_path / "c-images-idx3-ubyte"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"truncated at offset 2"):
        loaders.read_idx(short)
    images = tmp_path / "d-images-idx3-ubyte"
    write_idx(images, np.zeros((3, 2, 2)), 0x08)
    write_idx(tmp_path / "d-labels-idx1-ubyte", np.zeros(2), 0x08)
    with pytest.raises(ValueError, match=r"expected 3 labels"):
        loaders.load_file(images)


def test_unknown_and_missing_files(tmp_path):
    other = tmp_path / "data.parquet"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown file type"):
        loaders.load_file(other)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        loaders.load_file(tmp_path / "absent.csv")
