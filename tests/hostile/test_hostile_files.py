"""Hostile files: model files edited or damaged, loaders fed what they should refuse, and the
CLI's promise about them. Each case asserts the exact outcome: the same model, the right
values, or one ValueError naming the file with the reason."""

import contextlib
import gzip
import json
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_iris

from jsoftmax import SoftmaxRegression, cli
from jsoftmax.io import data as loaders
from jsoftmax.io import files as storage


@contextlib.contextmanager
def python_peak_bytes():
    """Yields a list that holds, after the block, the peak bytes Python allocated inside it."""
    peak = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()

# --- Model files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_model():
    X, y = load_iris(return_X_y=True)
    return SoftmaxRegression(max_iter=50, standardize=True).fit(X, y), X


@pytest.fixture
def model_file(iris_model, tmp_path):
    model, _ = iris_model
    path = tmp_path / "model.npz"
    model.save(path)
    return path


def _rewrite(source, target, *, arrays=None, meta=None, drop=(), keep_checksum=False):
    """A copy of a model file with some arrays or metadata replaced; by default the manifest and
    checksum are recomputed (a careful forger), with ``keep_checksum`` the old ones are kept."""
    stored, old_meta = storage.load_npz(source, kind="model")
    stored = {k: v for k, v in dict(stored, **(arrays or {})).items() if k not in drop}
    new_meta = dict(old_meta, **(meta or {}))
    if keep_checksum:
        payload = dict(stored, **{storage.META_KEY: np.array(json.dumps(new_meta))})
        with open(target, "wb") as handle:
            np.savez(handle, **payload)
    else:
        storage.atomic_save_npz(target, stored, new_meta)
    return target


def _same_model(a, b, X):
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(a.classes_, b.classes_)
    assert a.get_params() == b.get_params()


def test_round_trip_is_exact(iris_model, model_file):
    model, X = iris_model
    _same_model(model, SoftmaxRegression.load(model_file), X)


def test_an_edit_without_a_new_checksum_is_refused(model_file, tmp_path, iris_model):
    params = dict(iris_model[0].get_params(), C=2.0)
    edited = _rewrite(model_file, tmp_path / "e.npz", meta={"params": params}, keep_checksum=True)
    with pytest.raises(ValueError, match="e.npz: checksum mismatch"):
        SoftmaxRegression.load(edited)


@pytest.mark.parametrize(("edit", "message"), [
    (dict(params={"dtype": "float16"}), "`dtype` must be 'float64' or 'float32'"),
    (dict(params={"C": -1.0}), "`C` must be a positive number"),
    (dict(params={"fit_intercept": "yes"}), "`fit_intercept` must be True or False"),
    (dict(params={"solver": "newton"}), "unknown solver 'newton'"),
    (dict(arrays={"W": np.full((4, 3), np.nan)}), "W holds NaN or infinite values"),
    (dict(arrays={"W": np.ones((4, 3), np.int64)}), r"W must be a float array of shape \(4, 3\)"),
    (dict(arrays={"W": np.ones((5, 3))}), r"W must be a float array of shape \(4, 3\)"),
    (dict(arrays={"b": np.array([0.0, np.inf, 1.0])}), "b holds NaN or infinite values"),
    (dict(arrays={"scale": np.array([1.0, 0.0, 1.0, 1.0])}), "scale must be positive"),
    (dict(arrays={"mean": np.ones(3)}), r"mean must be a float array of shape \(4,\)"),
    (dict(arrays={"classes": np.array([0, 1, 1])}), "classes must be sorted and distinct"),
    (dict(arrays={"classes": np.array([2, 1, 0])}), "classes must be sorted and distinct"),
    (dict(arrays={"classes": np.array([[0, 1, 2]])}), "classes must be a 1-D array"),
    (dict(arrays={"classes": np.array([0.0, np.nan, 2.0])}), "classes must be a 1-D array"),
    (dict(drop=("W",)), "missing 'W'"),
    (dict(drop=("b",)), "fit_intercept=True but the file has no intercept array b"),
    (dict(drop=("scale",)), "missing 'scale'"),
    (dict(arrays={"extra": np.ones(2)}), r"unexpected arrays \['extra'\]"),
    (dict(meta={"n_features_in": "4"}), "n_features_in must be a positive int"),
    (dict(meta={"format": 3}), "unsupported model format 3"),
    (dict(meta={"params": {"C": 1.0}}), "hyperparameters"),
    (dict(meta={"n_iter": -1}), "n_iter must be an int"),
])
def test_forged_consistent_edits_are_refused_by_validation(model_file, tmp_path, iris_model, edit, message):
    edit = dict(edit)
    if "params" in edit:
        edit.setdefault("meta", {})["params"] = dict(iris_model[0].get_params(), **edit.pop("params"))
    edited = _rewrite(model_file, tmp_path / "e.npz", **edit)
    with pytest.raises(ValueError, match="e.npz: invalid model file: " + message) as info:
        SoftmaxRegression.load(edited)
    assert type(info.value) is ValueError


@pytest.mark.parametrize(("meta_text", "message"), [
    ('[1, 2]', "expected a JSON object, found list"),
    ('"model"', "expected a JSON object, found str"),
    ('{"kind": "model"', "corrupt metadata"),
    ('{"kind": "checkpoint"}', "is not a jsoftmax model file"),
])
def test_metadata_that_is_not_a_model_object(tmp_path, meta_text, message):
    path = tmp_path / "m.npz"
    np.savez(path, W=np.ones((2, 2)), **{storage.META_KEY: np.array(meta_text)})
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression.load(path)


def test_metadata_stored_as_numbers_not_text(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, W=np.ones((2, 2)), **{storage.META_KEY: np.arange(3)})
    with pytest.raises(ValueError, match="m.npz: corrupt metadata: the metadata is a int64 array"):
        SoftmaxRegression.load(path)


def _npy_bytes(shape_text: str, data: bytes, dtype="<f8") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape_text}, }}"
    header += " " * (63 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def test_a_huge_declared_shape_is_refused_before_allocating(tmp_path):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("W.npy", _npy_bytes("(1000000, 1000000)", b"\0" * 64))
    with python_peak_bytes() as peak:
        with pytest.raises(ValueError, match=r"m.npz is not a readable jsoftmax model file.*header declares"):
            SoftmaxRegression.load(path)
    assert peak[0] < 2**20


def test_compressed_and_object_members_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, W=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"c.npz is not a readable.*compression 8"):
        SoftmaxRegression.load(path)
    objects = tmp_path / "o.npz"
    with zipfile.ZipFile(objects, "w") as archive:
        archive.writestr("W.npy", _npy_bytes("(1,)", b"\0" * 8, dtype="|O"))
    with pytest.raises(ValueError, match="o.npz is not a readable.*Python objects"):
        SoftmaxRegression.load(objects)


def test_a_directory_or_missing_path(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        SoftmaxRegression.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        SoftmaxRegression.load(tmp_path / "absent.npz")


@pytest.mark.parametrize("where", ["local header", "array data", "central directory", "end record"])
def test_bit_flips_in_the_zip_structure(model_file, iris_model, where):
    raw = bytearray(model_file.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    end = raw.rfind(b"PK\x05\x06")
    position = {"local header": 8, "array data": 200, "central directory": central + 20,
                "end record": end + 12}[where]
    raw[position] ^= 0x40
    model_file.write_bytes(bytes(raw))
    try:
        loaded = SoftmaxRegression.load(model_file)
    except ValueError as err:
        assert str(model_file) in str(err)
    else:
        _same_model(iris_model[0], loaded, iris_model[1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_model_bytes_load_the_same_model_or_one_clear_error(iris_model, tmp_path, data):
    model, X = iris_model
    path = tmp_path / "fuzz.npz"
    model.save(path)
    raw = bytearray(path.read_bytes())
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if mutation == "flip":
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "truncate":
        raw = raw[:at]
    elif mutation == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        raw[at:at + len(chunk)] = chunk
    path.write_bytes(bytes(raw))
    try:
        loaded = SoftmaxRegression.load(path)
    except ValueError as err:
        assert type(err) is ValueError and str(path) in str(err)
    else:
        _same_model(model, loaded, X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # capped for speed
def test_feature_names_survive_save_and_load(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = SoftmaxRegression(max_iter=30).fit(X, y)
    model.save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz")
    assert list(loaded.feature_names_in_) == list(X.columns)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    reordered = X[list(reversed(X.columns))]
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(reordered)
    assert isinstance(reordered, pd.DataFrame)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # capped for speed
def test_numpy_scalar_hyperparameters_and_class_weights_save(tmp_path):
    X, y = load_iris(return_X_y=True)
    model = SoftmaxRegression(C=np.float64(0.5), max_iter=np.int64(40), tol=np.float32(1e-3),
                              class_weight={np.int64(0): 2.0, np.int64(1): np.float64(1.0), 2: 1.0})
    model.fit(X, y).save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz")
    assert loaded.C == 0.5 and loaded.max_iter == 40 and type(loaded.max_iter) is int
    assert loaded.class_weight == {0: 2.0, 1: 1.0, 2: 1.0}
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # capped for speed
def test_unstorable_hyperparameter_is_a_type_error_naming_it(tmp_path):
    X, y = load_iris(return_X_y=True)
    model = SoftmaxRegression(max_iter=20).fit(X, y)
    model.random_state = [1, 2]
    with pytest.raises(TypeError, match="cannot save `random_state`"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_save_keeps_the_permissions_of_the_file_it_replaces(iris_model, tmp_path):
    model, _ = iris_model
    path = tmp_path / "m.npz"
    model.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~umask)
    os.chmod(path, 0o640)
    model.save(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)


def test_format_1_files_still_load_and_are_still_validated(iris_model, tmp_path):
    model, X = iris_model
    params = model.get_params()
    meta = {"kind": "model", "format": 1, "estimator": "SoftmaxRegression", "params": params,
            "n_features_in": 4, "n_iter": 3, "optimality": {}}
    W, b = model._coefficients()
    arrays = {"W": W, "b": b, "classes": model.classes_, "mean": model.mean_,
              "scale": model.scale_}
    old = tmp_path / "old.npz"
    np.savez(old, **arrays, **{storage.META_KEY: np.array(json.dumps(meta))})
    _same_model(model, SoftmaxRegression.load(old), X)
    np.savez(old, **dict(arrays, W=np.full((4, 3), np.nan)), **{storage.META_KEY: np.array(json.dumps(meta))})
    with pytest.raises(ValueError, match="old.npz: invalid model file: W holds NaN"):
        SoftmaxRegression.load(old)


# --- Loaders -------------------------------------------------------------------------------


def test_csv_with_a_byte_order_mark_keeps_its_first_name_and_row(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefflabel,a,b\nx,1,2\ny,3,4\n".encode())
    X, y = loaders.load_csv(path, label_column="label")
    assert y.tolist() == ["x", "y"] and X.tolist() == [[1, 2], [3, 4]]
    plain = tmp_path / "bom2.csv"
    plain.write_bytes("\ufeff1,2,0\n3,4,1\n".encode())
    X, y = loaders.load_file(plain)
    assert X.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1]


@pytest.mark.parametrize(("text", "rows"), [
    ("0,1,2,3\n5,6,7,1\n8,9,1,0\n", [[5, 6, 7], [8, 9, 1]]),        # pandas' default header
    ("1,2,3,4\n5,6,7,1\n8,9,1,0\n", [[5, 6, 7], [8, 9, 1]]),        # numbered from 1
    ("10,20,target\n5,6,1\n8,9,0\n", [[5, 6], [8, 9]]),             # numeric names, text label name
    ("1,2,0\n3,4,1\n", [[1, 2], [3, 4]]),                           # no header
    ("1,2,3,4,7\n", [[1, 2, 3, 4]]),                                 # one data row
])
def test_all_numeric_headers(tmp_path, text, rows):
    path = tmp_path / "h.csv"
    path.write_text(text)
    assert loaders.load_csv(path)[0].tolist() == rows


def test_header_can_be_forced(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("7,8,1\n5,6,1\n8,9,0\n")
    assert loaders.load_csv(path, header=True)[0].tolist() == [[5, 6], [8, 9]]


@pytest.mark.parametrize(("text", "message"), [
    ("1,2,a\n3,4,\n", r"line 2, column 3: empty label"),
    ("1,2,a\n3,4,  \n", r"line 2, column 3: empty label"),
    ("1,nan,a\n", r"line 1, column 2: feature value 'nan' is not finite"),
    ("1,inf,a\n", r"line 1, column 2: feature value 'inf' is not finite"),
    ("a\nb\n", "no feature columns"),
])
def test_csv_cells_that_must_be_refused(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.csv.*{message}"):
        loaders.load_file(path)


def test_non_utf8_csv_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("1,2,a\n3,4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv, line 2: not UTF-8 text"):
        loaders.load_file(path)


def test_corrupt_gzip_csv_names_the_file(tmp_path):
    path = tmp_path / "d.csv.gz"
    raw = gzip.compress(b"1,2,0\n3,4,1\n" * 1000)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"d.csv.gz, after line \d+: cannot decompress"):
        loaders.load_file(path)


def _idx(dims, payload: bytes, code=0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_gzip_bomb_is_read_only_up_to_the_declared_size(tmp_path):
    images = tmp_path / "b-images-idx3-ubyte.gz"
    with gzip.open(images, "wb", compresslevel=9) as handle:  # declares 10 bytes, holds 64 MiB
        handle.write(_idx((10, 1), b"\0" * 10))
        zeros = b"\0" * 2**20
        for _ in range(64):
            handle.write(zeros)
    assert images.stat().st_size < 200_000
    with python_peak_bytes() as peak:
        with pytest.raises(ValueError, match="should be 10 bytes for shape \\(10, 1\\); found more"):
            loaders.read_idx(images)
    assert peak[0] < 8 * 2**20


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_declaring_a_huge_shape_allocates_nothing(tmp_path, compressed):
    name = "h-images-idx3-ubyte" + (".gz" if compressed else "")
    raw = _idx((2**31, 2**31, 4), b"\1" * 100)
    (tmp_path / name).write_bytes(gzip.compress(raw) if compressed else raw)
    with python_peak_bytes() as peak:
        with pytest.raises(ValueError, match=f"{name}: data at offset 16 should be"):
            loaders.read_idx(tmp_path / name)
    assert peak[0] < 4 * 2**20  # one 1 MiB read block, not 16 EiB


def test_libsvm_huge_index_is_refused_without_allocating(tmp_path):
    path = tmp_path / "h.svm"
    path.write_text("1 1:0.5 1000000000:1\n0 2:1\n")
    with python_peak_bytes() as peak:
        with pytest.raises(ValueError, match=r"h.svm: the largest feature index, about 1000000000, would make a "
                                             r"model of 1000000000 features for 3 stored values"):
            loaders.load_svmlight(path)
    assert peak[0] < 2**20
    X, _ = loaders.load_svmlight(path, n_features=10**9)  # asked for: sparse, so still small
    assert X.shape == (2, 10**9) and X.nnz == 3


def test_libsvm_duplicate_and_unsorted_indices_are_summed(tmp_path):
    # scikit-learn's parser refuses them; jsoftmax's scanner reads such files, summing repeats.
    path = tmp_path / "d.svm"
    path.write_text("1 1:0.5 3:1 1:0.25\n0 2:1\n")
    X, y = loaders.load_svmlight(path)
    np.testing.assert_array_equal(X.toarray(), [[0.75, 0, 1], [0, 1, 0]])
    assert y.tolist() == [1, 0]


def test_libsvm_comes_back_sparse_from_scikit_learns_parser(tmp_path, monkeypatch):
    import scipy.sparse as sp
    import sklearn.datasets

    calls = []
    real = sklearn.datasets.load_svmlight_file
    monkeypatch.setattr(sklearn.datasets, "load_svmlight_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = tmp_path / "ok.svm.gz"
    path.write_bytes(gzip.compress(b"2 qid:7 1:0.5 40000:2\n1 3:1\n"))
    X, y = loaders.load_svmlight(path)
    assert calls and sp.issparse(X) and X.format == "csr" and X.shape == (2, 40000) and X.nnz == 3
    assert y.dtype == np.int64 and y.tolist() == [2, 1]


@pytest.mark.parametrize(("line", "message"), [
    ("1 -3:1", r"line 1: malformed feature '-3:1'"),
    ("1 1.5:1", r"line 1: malformed feature '1.5:1'"),
    ("1 2:nan", r"line 1: feature '2:nan' is not finite"),
    ("1 2:1e999", r"line 1: feature '2:1e999' is not finite"),
    ("1 4:x", r"line 1: malformed feature '4:x'"),
    ("cat 4:1", r"line 1: the label 'cat' is not a finite number"),
    ("nan 4:1", r"line 1: the label 'nan' is not a finite number"),
])
def test_libsvm_entries_that_must_be_refused(tmp_path, line, message):
    path = tmp_path / "bad.svm"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=f"bad.svm, {message}"):
        loaders.load_svmlight(path)


def test_npz_data_with_a_huge_declared_shape_or_nan(tmp_path):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", _npy_bytes("(100000000, 100000)", b"\0" * 80))
        archive.writestr("y.npy", _npy_bytes("(10,)", b"\0" * 80))
    with pytest.raises(ValueError, match="d.npz: not a readable .npz file.*header declares"):
        loaders.load_file(path)
    np.savez(path, X=np.array([[1.0, np.nan]]), y=np.array([0]))
    with pytest.raises(ValueError, match="d.npz: X holds NaN"):
        loaders.load_file(path)


def _parses_or_names_the_file(path, text, load, max_bytes):
    """``load(path)`` gives consistent finite arrays within ``max_bytes``, or a ValueError naming the file."""
    path.write_text(text)
    try:
        X, y = load(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        data = X.data if hasattr(X, "tocsr") else X  # a sparse X: its stored values
        assert X.ndim == 2 and X.shape[0] == len(y) >= 1 and np.all(np.isfinite(data))
        assert data.nbytes <= max_bytes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="0123456789.,-+eE \t\nabc\"", max_size=200))
def test_fuzzed_csv_parses_or_names_the_problem(tmp_path, text):
    _parses_or_names_the_file(tmp_path / "fuzz.csv", text, loaders.load_csv, 8 * len(text))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="0123456789:.- \n#e", max_size=200))
def test_fuzzed_libsvm_parses_or_names_the_problem(tmp_path, text):
    _parses_or_names_the_file(tmp_path / "fuzz.svm", text, loaders.load_svmlight, 8 * text.count(":"))


# --- The CLI's promise ---------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def saved_iris(tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert run_cli(capsys, "train", "--dataset", "iris", "--out", str(path), "--quiet")[0] == 0
    return path


def test_predict_on_a_file_without_the_label_column(saved_iris, tmp_path, capsys):
    X, y = load_iris(return_X_y=True)
    features = tmp_path / "features.csv"
    np.savetxt(features, X[:5], delimiter=",")
    code, out, _ = run_cli(capsys, "predict", str(saved_iris), str(features))
    with_labels = tmp_path / "labelled.csv"
    np.savetxt(with_labels, np.column_stack([X[:5], y[:5]]), delimiter=",")
    code2, out2, _ = run_cli(capsys, "predict", str(saved_iris), str(with_labels))
    assert code == code2 == 0 and out == out2 and len(out.split()) == 5


def test_predict_on_a_file_of_the_wrong_width_says_what_it_expected(saved_iris, tmp_path, capsys):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("1,2,3\n4,5,6\n")
    code, _, err = run_cli(capsys, "predict", str(saved_iris), str(wrong))
    assert code == 2 and err.count("\n") == 1
    assert "the model expects 4 feature columns (or 5 with the label column); the file has 3" in err


def test_evaluate_on_a_damaged_model_is_one_line(saved_iris, capsys, tmp_path):
    raw = bytearray(saved_iris.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    saved_iris.write_bytes(bytes(raw))
    data = tmp_path / "d.csv"
    data.write_text("1,2,3,4,0\n")
    code, _, err = run_cli(capsys, "evaluate", str(saved_iris), str(data))
    assert code == 2 and err.count("\n") == 1 and str(saved_iris) in err


def test_libsvm_index_past_n_features_names_the_file(tmp_path):
    path = tmp_path / "wide.svm"
    path.write_text("1 1:0.5 7:1\n0 2:1\n")
    with pytest.raises(ValueError, match=r"wide.svm: feature index 7 exceeds n_features=5"):
        loaders.load_svmlight(path, n_features=5)
    X, _ = loaders.load_svmlight(path, n_features=9)
    assert X.shape == (2, 9)
