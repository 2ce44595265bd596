"""Hostile inputs at the boundary (the trust issue): what a call reads is its own before it
returns, and ordinary NumPy layouts and dtypes mean what they hold. Each test is named after
its class: ``test_caller_memory_*`` and ``test_layouts_*``."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import jsoftmax
from jsoftmax import SoftmaxRegression
from jsoftmax._inplace import aligned_empty
from jsoftmax._validate import PrecisionWarning

# --- 1. What we read is ours before we return -----------------------------------------------
#
# X is allocated 64-byte aligned (a CPU device would adopt it without a copy) and large enough
# that the computation is still running when the test overwrites it: a call that kept reading
# the caller's buffer after returning would return the overwritten problem's values.

N, D, K = 20000, 32, 200


def caller_arrays(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = aligned_empty((N, D), dtype)
    X[...] = rng.standard_normal((N, D))
    y = rng.integers(0, K, N).astype(np.int32)
    W = aligned_empty((D, K), dtype)
    W[...] = 0.05 * rng.standard_normal((D, K))
    return X, y, W


def overwrite(*arrays):
    for a in arrays:
        a[...] = 50 * a + 3 if a.dtype.kind == "f" else 0


ENTRY_POINTS = {
    "risk": lambda W, X, y: jsoftmax.risk(W, X, y),
    "value_and_grad": lambda W, X, y: jsoftmax.value_and_grad(W, X, y),
    "risk_grad": lambda W, X, y: jsoftmax.risk_grad(W, X, y),
    "hvp": lambda W, X, y: jsoftmax.hvp(W, X, y, np.ones_like(W)),
    "linear_cross_entropy": lambda W, X, y: jsoftmax.linear_cross_entropy(X, W, y),
    # (NumPy arrays passed as jax.grad's own arguments are converted by JAX; ours are closed over.)
    "linear_cross_entropy_grad": lambda W, X, y: jax.grad(
        lambda w: jsoftmax.linear_cross_entropy(X, w, y))(jnp.asarray(W.copy())),
    "predict": lambda W, X, y: jsoftmax.predict(W, X),
    "predict_proba": lambda W, X, y: jsoftmax.predict_proba(W, X),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_caller_memory_is_read_before_the_call_returns(entry):
    call = ENTRY_POINTS[entry]
    X, y, W = caller_arrays()
    expected = jax.device_get(call(W.copy(), X.copy(), y.copy()))
    result = call(W, X, y)
    overwrite(X, y, W)  # the caller reuses its buffers at once
    got = jax.device_get(result)
    jax.tree_util.tree_map(lambda g, e: np.testing.assert_array_equal(g, e), got, expected)


def test_caller_memory_sparse_X_is_read_before_the_call_returns():
    X, y, W = caller_arrays()
    X[np.abs(X) < 1.0] = 0
    csr = sp.csr_matrix(X)
    expected = jax.device_get(jsoftmax.value_and_grad(W, sp.csr_matrix(X), y))
    result = jsoftmax.value_and_grad(W, csr, y)
    csr.data[...] = 99.0
    csr.indices[...] = 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(result), expected)


def test_caller_memory_fits_and_estimators_finish_reading_before_returning():
    # Fits read a large X in place (no copy) and block until done; the result must not
    # change when the caller overwrites X afterwards, nor predictions made from it.
    X, y, _ = caller_arrays(np.float64)
    y = y % 5
    with jax.enable_x64(True):
        start = jsoftmax.Params(np.zeros((D, 5)), np.zeros(5))
        expected = jsoftmax.fit(start, X.copy(), y.copy(), max_iter=5).params
        got = jsoftmax.fit(start, X, y, max_iter=5).params
        overwrite(X)
        np.testing.assert_array_equal(np.asarray(got.W), np.asarray(expected.W))
    X, y, _ = caller_arrays(np.float64)
    y = y % 5
    model = jsoftmax.SoftmaxRegression(max_iter=5).fit(X[:2000].copy(), y[:2000])
    expected = model.predict_proba(X.copy())
    got = model.predict_proba(X)
    overwrite(X)
    np.testing.assert_array_equal(got, expected)


# --- 2. Ordinary layouts and dtypes mean what they hold -------------------------------------


def small_problem(dtype=np.float32):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 6)).astype(dtype)
    y = rng.integers(0, 4, 40)
    W = (0.3 * rng.standard_normal((6, 4))).astype(dtype)
    return X, y, W


@pytest.mark.parametrize("entry", ["risk", "value_and_grad", "linear_cross_entropy", "predict_proba"])
def test_layouts_big_endian_arrays_give_the_values_they_hold(entry, x64):
    X, y, W = small_problem(np.float64)
    call = ENTRY_POINTS[entry]
    expected = jax.device_get(call(W, X, y.astype(np.int32)))
    got = jax.device_get(call(W.astype(">f8"), X.astype(">f8"), y.astype(">i2")))
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)


def test_layouts_big_endian_weights_and_probability_rows(x64):
    X, y, W = small_problem(np.float64)
    P = np.eye(4)[y] * 0.9 + 0.025
    w = np.linspace(0.5, 2.0, 40)
    expected = float(jsoftmax.risk(W, X, P, sample_weight=w))
    got = float(jsoftmax.risk(W, X, P.astype(">f8"), sample_weight=w.astype(">f8")))
    assert got == expected


def test_layouts_object_arrays_of_numbers_are_converted_once(x64):
    X, y, W = small_problem(np.float64)
    expected = float(jsoftmax.risk(W, X, y))
    assert float(jsoftmax.risk(W.astype(object), X.astype(object), y.astype(object))) == expected
    as_lists = float(jsoftmax.risk(W, X.tolist(), y.tolist()))
    assert as_lists == expected


@pytest.mark.parametrize(("value", "argument"), [
    (np.array([["a", "b"]] * 40), "X"), (np.array([[None, 1.0]] * 40, dtype=object), "X"),
    (np.array([np.datetime64("2020-01-01")] * 40), "labels"), ([[1.0, 2.0], [3.0]], "X")])
def test_layouts_arrays_that_are_not_numbers_name_the_argument(value, argument):
    X, y, W = small_problem()
    arguments = {"X": X, "labels": y}
    arguments[argument] = value
    with pytest.raises(TypeError, match=f"`{argument}`"):
        jsoftmax.risk(W[:2] if argument == "X" else W, arguments["X"], arguments["labels"])


def test_layouts_subnormal_float32_weights_weigh_like_equal_weights():
    X, y, W = small_problem()
    tiny = np.full(40, 1e-44, np.float32)  # subnormal: a device flushing them would see zeros
    assert tiny[0] > 0 and tiny[0] < np.finfo(np.float32).tiny
    np.testing.assert_allclose(float(jsoftmax.risk(W, X, y, sample_weight=tiny)),
                               float(jsoftmax.risk(W, X, y)), rtol=1e-6)
    result = jsoftmax.fit(jsoftmax.Params(np.zeros((6, 4), np.float32)), X, y, sample_weight=tiny,
                          l2=0.1, tol=1e-5)
    plain = jsoftmax.fit(jsoftmax.Params(np.zeros((6, 4), np.float32)), X, y, l2=0.1, tol=1e-5)
    assert result.n_iter > 0 and float(np.abs(result.params.W).max()) > 0.01
    np.testing.assert_allclose(result.params.W, plain.params.W, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layouts_subnormal_weights_in_the_estimator_mean_what_they_weigh(dtype):
    # scikit-learn's objective C·Σ sₙℓₙ + ½‖W‖²: weights of 1e-44 with C = 1e44 are unit weights
    # with C = 1; with C = 1 the penalty wins and every coefficient is 0 (as scikit-learn gives).
    X, y, _ = small_problem()
    tiny = np.full(40, 1e-44)
    plain = jsoftmax.SoftmaxRegression(dtype=dtype).fit(X, y)
    scaled = jsoftmax.SoftmaxRegression(C=1e44, dtype=dtype).fit(X, y, sample_weight=tiny)
    np.testing.assert_allclose(scaled.coef_, plain.coef_, atol=1e-4)
    # The optimum, W ≈ 1e-43, is 0 at the working precision: the fit may say it stalled there.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        flat = jsoftmax.SoftmaxRegression(dtype=dtype).fit(X, y, sample_weight=tiny)
    assert np.all(np.isfinite(flat.coef_)) and np.abs(flat.coef_).max() < 1e-30


@pytest.mark.parametrize("sparse", [False, True])
def test_layouts_predictions_on_nan_rows_are_refused_like_the_fit(sparse):
    X, y, W = small_problem()
    X[7, 2] = np.nan
    X = sp.csr_matrix(X) if sparse else X
    for call in (jsoftmax.predict, jsoftmax.predict_proba):
        with pytest.raises(ValueError, match="`X` (contains|stores 1) NaN or inf"):
            call(W, X)


@pytest.mark.parametrize("value", [1j, np.complex64(0.5), True, "0.1"])
def test_layouts_l2_of_the_wrong_kind_names_l2(value):
    X, y, W = small_problem()
    with pytest.raises(TypeError, match="`l2` must be a real scalar"):
        jsoftmax.risk(W, X, y, l2=value)


def test_layouts_float64_without_x64_warns_once_and_says_so(x32):
    X, y, W = small_problem(np.float64)
    with pytest.warns(PrecisionWarning, match="x64 mode is off, so jsoftmax computes in float32") as caught:
        value = jsoftmax.risk(W, X, y)
    assert value.dtype == jnp.float32 and len(caught) == 1
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jsoftmax.risk(W, X, y)  # once per process
        jsoftmax.risk(W.astype(np.float32), X.astype(np.float32), y)  # float32 never warns


def test_layouts_float64_with_x64_computes_in_float64_without_a_word(x64):
    X, y, W = small_problem(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jsoftmax.risk(W, X, y).dtype == jnp.float64


# --- 6. Checkpoints belong to their run -------------------------------------------------------


def checkpoint_problem():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 4))
    y = rng.integers(0, 3, 40)
    return X, y


def minibatch_fit(folder, X, y, resume=False, epochs=2, **changes):
    options = dict(optimizer=optax.adam(0.1), batch_size=10, seed=0, l2=0.01)
    options.update(changes)
    optimizer = options.pop("optimizer")
    start = jsoftmax.Params(np.zeros((X.shape[1], 3), X.dtype), np.zeros(3, X.dtype))
    return jsoftmax.fit(start, X, y, optimizer, max_epochs=epochs, checkpoint_dir=str(folder),
                        resume=resume, **options)


CHANGES = {
    "data": lambda X, y: (X + 1e-3, y, {}),
    "labels": lambda X, y: (X, np.roll(y, 1), {}),
    "l2": lambda X, y: (X, y, dict(l2=0.02)),
    "sample_weight": lambda X, y: (X, y, dict(sample_weight=np.linspace(0.5, 1.5, 40))),
    "label_smoothing": lambda X, y: (X, y, dict(label_smoothing=0.1)),
    "ignore_index": lambda X, y: (X, y, dict(ignore_index=2)),
    "batch_size": lambda X, y: (X, y, dict(batch_size=20)),
    "seed": lambda X, y: (X, y, dict(seed=1)),
    "dtype": lambda X, y: (X.astype(np.float32), y, {}),
    "learning_rate": lambda X, y: (X, y, dict(optimizer=optax.adam(0.2))),
    "optimizer": lambda X, y: (X, y, dict(optimizer=optax.sgd(0.1))),
    "schedule": lambda X, y: (X, y, dict(optimizer=optax.adam(optax.exponential_decay(0.1, 5, 0.5)))),
    "feature_mean": lambda X, y: (X, y, dict(feature_mean=np.full(4, 0.1))),
    "feature_scale": lambda X, y: (X, y, dict(feature_scale=np.full(4, 2.0))),
    "patience": lambda X, y: (X, y, dict(patience=3)),
    "validation_data": lambda X, y: (X, y, dict(validation_data=(X[:10], y[:10]))),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_checkpoints_resume_only_the_run_they_belong_to(x64, tmp_path, change):
    X, y = checkpoint_problem()
    minibatch_fit(tmp_path, X, y)
    X2, y2, options = CHANGES[change](X, y)
    with pytest.raises(ValueError, match="written for other data or options"):
        minibatch_fit(tmp_path, X2, y2, resume=True, epochs=4, **options)
    assert minibatch_fit(tmp_path, X, y, resume=True, epochs=4).n_epochs == 4  # its own run resumes


def test_checkpoints_of_another_solver_are_not_resumed(x64, tmp_path):
    X, y = checkpoint_problem()
    start = jsoftmax.Params(np.zeros((4, 3)), np.zeros(3))
    jsoftmax.fit(start, X, y, solver="lbfgs", l2=0.1, max_iter=3, tol=0.0, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match="written for other data or options"):
        jsoftmax.fit(start, X, y, solver="newton-cg", l2=0.1, max_iter=6, tol=0.0, checkpoint_dir=str(tmp_path),
                     resume=True)


def test_checkpoints_of_runs_sharing_a_folder_are_all_kept(x64, tmp_path):
    from jsoftmax.io import files as storage

    X, y = checkpoint_problem()
    first = minibatch_fit(tmp_path, X, y, epochs=3)
    mine = storage.list_checkpoints(tmp_path)
    other = minibatch_fit(tmp_path, X + 1.0, y, epochs=3)  # another problem, resume=False
    files = storage.list_checkpoints(tmp_path)
    assert set(mine) < set(files) and len(files) == 2 * len(mine) == 4  # two kept per run
    resumed = minibatch_fit(tmp_path, X, y, resume=True, epochs=3)
    np.testing.assert_array_equal(np.asarray(resumed.params.W), np.asarray(first.params.W))
    resumed_other = minibatch_fit(tmp_path, X + 1.0, y, resume=True, epochs=3)
    np.testing.assert_array_equal(np.asarray(resumed_other.params.W), np.asarray(other.params.W))


# --- 7. The verifier takes what the rest takes ---------------------------------------------


def sparse_problem():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 8))
    X[np.abs(X) < 0.8] = 0
    return X, rng.integers(0, 3, 30), 0.2 * rng.standard_normal((8, 3))


@pytest.mark.parametrize("layout", ["csr", "csc", "coo", "bcoo", "bcsr"])
def test_verifier_checks_a_sparse_X_through_its_sparse_layout(x64, layout):
    from jax.experimental import sparse as jsparse

    X, y, W = sparse_problem()
    given = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "coo": sp.coo_matrix,
             "bcoo": jsparse.BCOO.fromdense, "bcsr": jsparse.BCSR.fromdense}[layout](X)
    report = jsoftmax.check_gradient(jsoftmax.Params(W, np.zeros(3)), given, y, l2=0.1,
                                     sample_weight=np.linspace(0.5, 1.5, 30))
    dense = jsoftmax.check_gradient(jsoftmax.Params(W, np.zeros(3)), X, y, l2=0.1,
                                    sample_weight=np.linspace(0.5, 1.5, 30))
    assert report.passed and report.problem["X"] == "sparse"
    assert [r.quantity for r in report.rows] == [r.quantity for r in dense.rows if "dR/dX" not in r.quantity]


def test_verifier_catches_a_wrong_sparse_gradient(x64, monkeypatch):
    from jsoftmax import _sparse

    X, y, W = sparse_problem()
    real = _sparse.SparseChunk.transposed_product
    monkeypatch.setattr(_sparse.SparseChunk, "transposed_product", lambda chunk, dz: 1.01 * real(chunk, dz))
    report = jsoftmax.check_gradient(W, sp.csr_matrix(X), y)
    failed = {r.name for r in report.rows if not r.passed}
    assert not report.passed and "dR/dW" in failed


@pytest.mark.parametrize("entry", ["risk", "value_and_grad", "hvp", "linear_cross_entropy", "predict_proba"])
def test_verifier_and_every_function_taking_sparse_X_agree_with_dense(x64, entry):
    X, y, W = sparse_problem()
    call = ENTRY_POINTS[entry]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                           jax.device_get(call(W, sp.csr_matrix(X), y)), jax.device_get(call(W, X, y)))


# --- 5. The CLI never guesses, and never overwrites what it reads ---------------------------


def run_cli(capsys, *argv):
    from jsoftmax import cli

    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def iris_frame():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X, np.array(["setosa", "versicolor", "virginica"])[y]


def write_csv(path, header, rows):
    lines = ([",".join(header)] if header else []) + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def test_cli_model_reads_new_files_as_it_read_its_training_file(tmp_path, capsys):
    # Trained with the label in column 0: predict on the same layout must not read the label as a
    # feature and drop the last feature.
    X, y = iris_frame()
    train = tmp_path / "train.csv"
    write_csv(train, ["species", "a", "b", "c", "d"], [[label, *row] for label, row in zip(y, X)])
    model = tmp_path / "m.npz"
    code, _, err = run_cli(capsys, "train", train, "--label-column", "0", "--out", model, "--quiet")
    assert code == 0, err
    expected = SoftmaxRegression.load(model).predict(X)
    code, out, _ = run_cli(capsys, "predict", model, train)
    assert code == 0 and out.split() == expected.tolist()
    # The same columns in another order, with a header: matched by name.
    order = [3, 0, 4, 2, 1]
    names = ["species", "a", "b", "c", "d"]
    shuffled = tmp_path / "shuffled.csv"
    write_csv(shuffled, [names[j] for j in order],
              [[[label, *row][j] for j in order] for label, row in zip(y, X)])
    code, out, _ = run_cli(capsys, "predict", model, shuffled)
    assert code == 0 and out.split() == expected.tolist()
    code, out, _ = run_cli(capsys, "evaluate", model, shuffled, "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.9
    # Without the label column, by name too; a file whose names differ is refused.
    features_only = tmp_path / "features.csv"
    write_csv(features_only, ["d", "c", "b", "a"], [row[::-1] for row in X])
    code, out, _ = run_cli(capsys, "predict", model, features_only)
    assert code == 0 and out.split() == expected.tolist()
    renamed = tmp_path / "renamed.csv"
    write_csv(renamed, ["a", "b", "c", "e"], X)
    code, _, err = run_cli(capsys, "predict", model, renamed)
    assert code == 2 and "do not match the model's by name (missing ['d'], not the model's ['e'])" in err


def test_cli_headerless_training_layout_is_kept(tmp_path, capsys):
    X, y = iris_frame()
    train = tmp_path / "train.csv"
    write_csv(train, None, [[label, *row] for label, row in zip(y, X)])
    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", train, "--label-column", "0", "--out", model, "--quiet")[0] == 0
    expected = SoftmaxRegression.load(model).predict(X)
    code, out, _ = run_cli(capsys, "predict", model, train)
    assert code == 0 and out.split() == expected.tolist()


def test_cli_never_overwrites_its_inputs_or_files_it_did_not_write(tmp_path, capsys):
    X, y = iris_frame()
    data = tmp_path / "data.npz"
    np.savez(data, X=X, y=y)
    before = data.read_bytes()
    code, _, err = run_cli(capsys, "train", data, "--out", data, "--quiet")
    assert code == 2 and "is the data file being read" in err and data.read_bytes() == before
    csv_file = tmp_path / "data.csv"
    write_csv(csv_file, None, [[*row, label] for label, row in zip(y, X)])
    text = csv_file.read_text()
    code, _, err = run_cli(capsys, "train", csv_file, "--plot", csv_file, "--quiet")
    assert code == 2 and "is the data file being read" in err and csv_file.read_text() == text
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, _, err = run_cli(capsys, "train", csv_file, "--out", notes, "--quiet")
    assert code == 2 and "is not a jsoftmax model file" in err and notes.read_text() == "mine"
    code, _, err = run_cli(capsys, "train", csv_file, "--plot", notes, "--quiet")
    assert code == 2 and "is not a PNG image" in err and notes.read_text() == "mine"
    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", csv_file, "--out", model, "--quiet")[0] == 0
    assert run_cli(capsys, "train", csv_file, "--out", model, "--C", "0.5", "--quiet")[0] == 0  # a model: replaced


def test_cli_a_diverged_run_says_so_and_saves_nothing(tmp_path, capsys):
    model = tmp_path / "m.npz"
    code, out, err = run_cli(capsys, "train", "--dataset", "digits", "--no-standardize", "--solver", "sgd",
                             "--batch-size", "64", "--epochs", "3", "--lr", "1e6", "--out", model)
    assert code == 2 and "training diverged" in err and "Input contains NaN" not in err + out
    assert not model.exists()


def test_cli_train_without_out_says_the_model_is_not_kept(capsys):
    code, out, _ = run_cli(capsys, "train", "--dataset", "iris")
    assert code == 0 and "The model was not saved: pass --out" in out


def test_cli_labels_are_read_exactly_as_written(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    labels = np.array(["007", "1.0", "+1"])[np.argmax(X, axis=1)]
    data = tmp_path / "labels.csv"
    write_csv(data, None, [[*row, label] for label, row in zip(labels, X)])
    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", data, "--out", model, "--quiet", "--test-size", "0")[0] == 0
    assert sorted(SoftmaxRegression.load(model).classes_.tolist()) == ["+1", "007", "1.0"]
    code, out, _ = run_cli(capsys, "predict", model, data)
    assert code == 0 and set(out.split()) <= {"007", "1.0", "+1"}
    code, out, _ = run_cli(capsys, "predict", model, data, "--proba")
    assert out.splitlines()[0] == "+1,007,1.0"


def test_cli_libsvm_index_base_is_the_training_files(tmp_path, capsys):
    # Trained on a zero-based file; a file to predict whose rows happen to lack index 0 must not
    # be read one-based (every feature one column off).
    rng = np.random.default_rng(1)
    X = np.abs(rng.standard_normal((80, 4))) * (rng.random((80, 4)) < 0.7)
    y = np.argmax(X, axis=1)
    X[0, 0] = 1.0  # index 0 appears: zero-based

    def write(path, rows, labels):
        path.write_text("".join(f"{label} " + " ".join(f"{j}:{v}" for j, v in enumerate(row) if v) + "\n"
                                for label, row in zip(labels, rows)))

    train = tmp_path / "train.svm"
    write(train, X, y)
    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", train, "--out", model, "--quiet", "--test-size", "0")[0] == 0
    test_rows = X[1:20].copy()
    test_rows[:, 0] = 0  # no index 0 in this file
    test = tmp_path / "test.svm"
    write(test, test_rows, y[1:20])
    expected = SoftmaxRegression.load(model).predict(test_rows)
    code, out, _ = run_cli(capsys, "predict", model, test)
    assert code == 0 and [int(v) for v in out.split()] == expected.tolist()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".txt", ".svm", ".svm.gz",
                                    ".svm.bz2", ".svmlight", ".libsvm.bz2", ".npz"])
def test_cli_every_documented_format_and_compression_trains_and_predicts(tmp_path, capsys, suffix):
    import bz2
    import gzip

    X, y = iris_frame()
    path = tmp_path / f"iris{suffix}"
    base = suffix.split(".")[1]
    if base == "npz":
        np.savez(path, X=X, y=y)
    else:
        sep = "\t" if base == "tsv" else ","
        text = ("".join(f"{ids} " + " ".join(f"{j + 1}:{v}" for j, v in enumerate(row)) + "\n"
                        for ids, row in zip(np.unique(y, return_inverse=True)[1], X))
                if base in ("svm", "svmlight", "libsvm") else
                "".join(sep.join([*map(str, row), label]) + "\n" for label, row in zip(y, X)))
        opener = gzip.open if suffix.endswith(".gz") else bz2.open if suffix.endswith(".bz2") else open
        with opener(path, "wt") as handle:
            handle.write(text)
    model = tmp_path / "m.npz"
    code, _, err = run_cli(capsys, "train", path, "--out", model, "--quiet")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "evaluate", model, path, "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.9


# --- 8. The LM-head op inside a real training loop --------------------------------------------


def head_problem(dtype=jnp.float32, shape=(4, 6), d=8, k=12, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((*shape, d)), dtype)
    w = jnp.asarray(0.3 * rng.standard_normal((d, k)), dtype)
    y = jnp.asarray(rng.integers(0, k, shape), jnp.int32)
    return x, w, y


@pytest.mark.parametrize("checks", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lm_head_fully_padded_microbatch_is_loss_zero_with_zero_gradients(monkeypatch, reduction, checks):
    if checks:
        monkeypatch.setenv("JSOFTMAX_CHECK_TRACED", "1")
    x, w, y = head_problem(shape=(24,))
    padded = jnp.full_like(y, -100)

    @jax.jit
    def step(w, x, y):
        loss, grads = jax.value_and_grad(lambda w, x: jnp.sum(jsoftmax.linear_cross_entropy(x, w, y, reduction=reduction)),
                                         argnums=(0, 1))(w, x)
        return loss, grads

    loss, (gw, gx) = jax.block_until_ready(step(w, x, padded))
    assert float(loss) == 0.0
    assert np.all(np.asarray(gw) == 0) and np.all(np.asarray(gx) == 0)
    # ...and the same step on a real batch still trains.
    loss, (gw, _) = step(w, x, y)
    assert float(loss) > 0 and np.abs(np.asarray(gw)).max() > 0
    # Eagerly too: the LM-head op defines the value instead of refusing the batch.
    assert float(jsoftmax.linear_cross_entropy(x, w, padded, reduction="mean")) == 0.0


def test_lm_head_traced_checks_are_off_by_default_and_on_with_the_switch(monkeypatch):
    x, w, y = head_problem(shape=(24,))

    def callbacks():
        text = jax.jit(lambda w, y: jsoftmax.linear_cross_entropy(x, w, y)).lower(w, y).as_text()
        return text.count("callback")

    monkeypatch.delenv("JSOFTMAX_CHECK_TRACED", raising=False)
    assert callbacks() == 0
    monkeypatch.setenv("JSOFTMAX_CHECK_TRACED", "1")
    assert callbacks() > 0
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"class ids in \[0, 12\)"):
        jax.block_until_ready(jax.jit(lambda w, y: jsoftmax.linear_cross_entropy(x, w, y))(w, y.at[3].set(12)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_lm_head_takes_leading_dimensions_like_optax(x64, reduction, soft):
    x, w, y = head_problem(jnp.float64, shape=(3, 5))
    y = y.at[1, 2].set(-100)
    labels = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 12)))) if soft else y
    flat_labels = labels.reshape(15, 12) if soft else labels.reshape(15)
    out = jsoftmax.linear_cross_entropy(x, w, labels, reduction=reduction, return_lse=True, return_predictions=True,
                                        return_accuracy=True)
    flat = jsoftmax.linear_cross_entropy(x.reshape(15, 8), w, flat_labels, reduction=reduction, return_lse=True,
                                         return_predictions=True, return_accuracy=True)
    for got, want in zip(out, flat):
        per_row = want.ndim == 1
        assert got.shape == ((3, 5) if per_row else ()), (got.shape, want.shape)
        np.testing.assert_array_equal(np.asarray(got).reshape(-1), np.asarray(want).reshape(-1))
    gx = jax.grad(lambda x: jnp.sum(jsoftmax.linear_cross_entropy(x, w, labels, reduction=reduction)))(x)
    gx_flat = jax.grad(lambda x: jnp.sum(jsoftmax.linear_cross_entropy(x, w, flat_labels, reduction=reduction)))(
        x.reshape(15, 8))
    assert gx.shape == x.shape
    np.testing.assert_allclose(np.asarray(gx).reshape(15, 8), gx_flat, rtol=1e-12, atol=1e-15)


def test_lm_head_errors_name_its_own_arguments():
    x, w, y = head_problem(shape=(3, 5))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3, 5\) .* to match `x` of shape \(3, 5, 8\)"):
        jsoftmax.linear_cross_entropy(x, w, y[:, :4])
    with pytest.raises(ValueError, match=r"`w` must have shape \(n_features, n_classes\) = \(8, K\) to match `x`"):
        jsoftmax.linear_cross_entropy(x, w[:7], y)
    with pytest.raises(TypeError, match=r"`w` dtype must match `x` dtype"):
        jsoftmax.linear_cross_entropy(x, w.astype(jnp.bfloat16), y)
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf"):
        jsoftmax.linear_cross_entropy(x.at[0, 0, 0].set(jnp.nan), w, y)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(n_classes,\) = \(12,\) to match `w`"):
        jsoftmax.linear_cross_entropy(x, w, y, bias=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"`w` must be 2-D with shape \(n_features, n_classes\)"):
        jsoftmax.linear_cross_entropy(x, [w], y)


# --- 4. scikit-learn's conventions (scikit-learn's own tests run in tests/conformance) -------


def test_conventions_written_coefficients_are_the_model():
    X, y = iris_frame()
    model = SoftmaxRegression(max_iter=1000).fit(X, y)
    model.coef_[:] = 0
    model.intercept_[:] = 0
    np.testing.assert_allclose(model.predict_proba(X), 1 / 3)
    np.testing.assert_allclose(model.decision_function(X), 0)
    binary = SoftmaxRegression(max_iter=1000).fit(X, y == "setosa")
    binary.coef_ = np.ones((1, 4))
    binary.intercept_ = np.array([-2.0])
    np.testing.assert_allclose(binary.predict_proba(X)[:, 1], 1 / (1 + np.exp(-(X.sum(1) - 2))), rtol=1e-12)


def test_conventions_C_inf_max_iter_0_and_the_convergence_warning():
    from sklearn.exceptions import ConvergenceWarning

    X, y = iris_frame()
    X = (X - X.mean(0)) / X.std(0)
    free = SoftmaxRegression(C=np.inf, max_iter=2000).fit(X[:100], y[:100] == "setosa")  # separable: no penalty
    assert free.optimality_["converged"] is True or free.optimality_["stop_reason"] == "gtol"
    with pytest.warns(ConvergenceWarning, match="failed to converge after 0 iteration"):
        start = SoftmaxRegression(max_iter=0).fit(X, y)
    assert start.n_iter_[0] == 0 and np.all(start.coef_ == 0)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge after 2 iteration"):
        SoftmaxRegression(max_iter=2, tol=1e-12).fit(X, y)


def test_conventions_cv_scores_with_its_scoring_and_sample_weight():
    from sklearn.metrics import get_scorer

    X, y = iris_frame()
    weights = np.where(y == "setosa", 3.0, 1.0)
    cv = jsoftmax.SoftmaxRegressionCV(Cs=[0.1, 1.0], cv=3, scoring="neg_log_loss", max_iter=500).fit(X, y)
    assert cv.score(X, y) == pytest.approx(get_scorer("neg_log_loss")(cv, X, y))
    assert cv.score(X, y, sample_weight=weights) == pytest.approx(
        get_scorer("neg_log_loss")(cv, X, y, sample_weight=weights))
    # The folds' scorer gets each fold's sample weights (scikit-learn passes them without routing).
    seen = []

    def scorer(model, X_test, y_test, sample_weight=None):
        seen.append(sample_weight)
        return 0.0

    jsoftmax.SoftmaxRegressionCV(Cs=[1.0], cv=3, scoring=scorer, max_iter=500).fit(X, y, sample_weight=weights)
    assert len(seen) == 3 and all(w is not None and len(w) == 50 for w in seen)


def test_conventions_cv_folds_lacking_a_class_or_all_their_weight_are_fitted():
    X, y = iris_frame()
    folds = [(np.arange(100), np.arange(100, 150)), (np.arange(50, 150), np.arange(50))]  # each lacks a class
    cv = jsoftmax.SoftmaxRegressionCV(Cs=[0.1, 1.0], cv=folds, scoring="neg_log_loss", max_iter=500).fit(X, y)
    assert np.all(np.isfinite(cv.scores_["setosa"])) and cv.coef_.shape == (3, 4)
    weights = np.ones(150)
    weights[:25] = 0
    folds = [(np.arange(25), np.arange(25, 150)), (np.arange(25, 150), np.arange(25, 75))]
    # Fold 0 trains on rows that all weigh 0: its objective is the penalty alone, W = 0.
    cv = jsoftmax.SoftmaxRegressionCV(Cs=[1.0], cv=folds, max_iter=500).fit(X, y, sample_weight=weights)
    np.testing.assert_array_equal(cv.coefs_paths_["setosa"][0, 0], 0.0)
    assert np.abs(cv.coefs_paths_["setosa"][1, 0]).max() > 0.1


@pytest.mark.parametrize("labels", [
    np.array([3, 7, 9], np.int8), np.array([3, 7, 9], np.uint16), np.array([1.0, 2.0, 4.0]),
    np.array(["a", "b", "c"]), np.array(["a", "b", "c"], dtype=object)])
def test_conventions_label_types_round_trip_through_a_model_file(tmp_path, labels):
    X, y = iris_frame()
    ids = np.unique(y, return_inverse=True)[1]
    model = SoftmaxRegression(max_iter=1000).fit(X, labels[ids])
    model.save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.classes_.dtype == model.classes_.dtype
    predicted, again = model.predict(X), loaded.predict(X)
    assert predicted.dtype == again.dtype and predicted.tolist() == again.tolist()
    assert type(predicted[0]) is type(again[0])


def test_conventions_bool_labels_round_trip_and_unseen_labels_score_as_wrong(tmp_path):
    X, y = iris_frame()
    model = SoftmaxRegression(max_iter=1000).fit(X, y == "setosa")
    model.save(tmp_path / "m.npz")
    loaded = SoftmaxRegression.load(tmp_path / "m.npz")
    assert loaded.classes_.dtype == bool and loaded.predict(X).tolist() == model.predict(X).tolist()
    ints = SoftmaxRegression(max_iter=1000).fit(X, np.unique(y, return_inverse=True)[1])
    assert ints.score(X, np.full(150, 7)) == 0.0  # a label the model never saw is never predicted
