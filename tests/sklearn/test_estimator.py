"""SoftmaxRegression: parity with scikit-learn, estimator conventions, persistence, bad input."""

import zipfile

import numpy as np
import optax
import pytest
from sklearn import datasets
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jsoftmax import SoftmaxRegression


def sklearn_objective(model, X, y, C):
    """scikit-learn's C * sum(loss) + ||coef||^2 / 2 at a fitted model's coefficients."""
    log_p = model.predict_log_proba(X)
    ids = np.searchsorted(model.classes_, y)
    return float(C * -log_p[np.arange(len(y)), ids].sum() + 0.5 * np.sum(model.coef_**2))


@pytest.mark.parametrize("name", ["iris", "wine", "digits", "breast_cancer"])
def test_parity_with_scikit_learn(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    C = 0.5
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(C=C, tol=1e-8, max_iter=10_000).fit(X, y)
    assert ours.optimality_["converged"]
    assert ours.coef_.shape == theirs.coef_.shape and ours.intercept_.shape == theirs.intercept_.shape
    ours_obj, theirs_obj = sklearn_objective(ours, X, y, C), sklearn_objective(theirs, X, y, C)
    assert ours_obj <= theirs_obj * (1 + 1e-6), (ours_obj, theirs_obj)
    np.testing.assert_allclose(ours.objective(X, y), ours_obj, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)
    assert ours.score(X, y) == theirs.score(X, y)
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=1e-3)


def test_works_in_pipeline_grid_search_and_clone():
    X, y = datasets.load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), SoftmaxRegression(max_iter=200))
    search = GridSearchCV(pipe, {"softmaxregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.9
    model = SoftmaxRegression(C=3.0, solver="adam", batch_size=16)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "coef_")


def test_string_classes_and_label_types():
    X, y = datasets.load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = SoftmaxRegression(standardize=True).fit(X, names)
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]
    assert set(model.predict(X)) <= set(model.classes_)
    assert model.predict_proba(X).shape == (150, 3)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), model.predict_proba(X), rtol=1e-10)


def test_class_weight_balanced_equals_sample_weights():
    X, y = datasets.load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    balanced = SoftmaxRegression(class_weight="balanced", tol=1e-10, max_iter=1000).fit(X, y)
    counts = np.bincount(y)
    weights = (len(y) / (3 * counts))[y]
    explicit = SoftmaxRegression(tol=1e-10, max_iter=1000).fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(balanced.coef_, explicit.coef_, rtol=1e-7, atol=1e-9)
    sk = LogisticRegression(class_weight="balanced", tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(balanced.predict_proba(X), sk.predict_proba(X), atol=1e-4)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # capped on purpose
def test_warm_start_continues():
    X, y = datasets.load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    model = SoftmaxRegression(max_iter=5, warm_start=True).fit(X, y)
    first = model.objective(X, y)
    model.fit(X, y)
    assert model.objective(X, y) < first
    cold = SoftmaxRegression(max_iter=5).fit(X, y)
    np.testing.assert_allclose(cold.objective(X, y), first, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 60 epochs, no tol
def test_minibatch_solvers_and_custom_optax():
    X, y = datasets.load_iris(return_X_y=True)
    for solver in ("adam", "sgd", optax.adamw(0.05)):
        model = SoftmaxRegression(solver=solver, batch_size=32, max_iter=60, standardize=True,
                                  learning_rate=0.05, random_state=0).fit(X, y)
        assert model.score(X, y) > 0.9, solver
        assert model.n_iter_[0] == 60


def test_optimality_report_and_scikit_learns_convergence_warning():
    X, y = datasets.load_digits(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge after 3 iteration"):
        model = SoftmaxRegression(max_iter=3).fit(X / 16, y)
    report = model.optimality_
    assert report["converged"] is False and report["stop_reason"] == "max_iter"
    assert report["n_iter"] == 3 and report["grad_norm"] > report["tol"]


def test_save_and_load_roundtrip(tmp_path):
    X, y = datasets.load_iris(return_X_y=True)
    names = np.array(["a", "b", "c"])[y]
    model = SoftmaxRegression(C=2.0, standardize=True).fit(X, names)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = SoftmaxRegression.load(path)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), rtol=1e-12)
    assert loaded.get_params() == model.get_params()
    assert loaded.optimality_ == model.optimality_
    # npz, no pickle: numpy refuses object arrays without allow_pickle, and there are none.
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary files left


def test_save_is_atomic(tmp_path, monkeypatch):
    X, y = datasets.load_iris(return_X_y=True)
    model = SoftmaxRegression(max_iter=1000).fit(X, y)
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        SoftmaxRegression(C=0.1, max_iter=1000).fit(X, y).save(path)
    assert path.read_bytes() == before  # the old model is intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_load_rejects_truncated_corrupt_and_foreign_files(tmp_path):
    X, y = datasets.load_iris(return_X_y=True)
    path = tmp_path / "model.npz"
    SoftmaxRegression(max_iter=1000).fit(X, y).save(path)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz is not a readable jsoftmax model file"):
        SoftmaxRegression.load(truncated)

    corrupt = tmp_path / "corrupt.npz"
    flipped = bytearray(data)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("W.npy")
    flipped[info.header_offset + 100] ^= 0xFF  # inside W's data: the CRC must catch it
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt"):
        SoftmaxRegression.load(corrupt)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, X=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="has no metadata"):
        SoftmaxRegression.load(foreign)

    with pytest.raises(FileNotFoundError, match="model file not found"):
        SoftmaxRegression.load(tmp_path / "absent.npz")


def test_load_rejects_mismatched_arrays(tmp_path):
    from jsoftmax.io import files as storage

    X, y = datasets.load_iris(return_X_y=True)
    path = tmp_path / "model.npz"
    SoftmaxRegression(max_iter=1000).fit(X, y).save(path)
    arrays, meta = storage.load_npz(path, kind="model")
    arrays["W"] = arrays["W"][:, :2]  # 2 columns for 3 classes
    bad = tmp_path / "bad.npz"
    storage.atomic_save_npz(bad, arrays, meta)
    with pytest.raises(ValueError, match=r"invalid model file: W must be a float array of shape \(4, 3\)"):
        SoftmaxRegression.load(bad)


def test_bad_input():
    X, y = datasets.load_iris(return_X_y=True)
    with pytest.raises(NotFittedError):
        SoftmaxRegression().predict(X)
    with pytest.raises(ValueError, match="at least 2 classes; got 1 class"):
        SoftmaxRegression().fit(X, np.zeros(150))
    with pytest.raises(ValueError, match="NaN"):
        SoftmaxRegression().fit(np.where(X > 7, np.nan, X), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SoftmaxRegression().fit(X, y[:-1])
    with pytest.raises(ValueError, match="sample_weight"):
        SoftmaxRegression().fit(X, y, sample_weight=np.ones(149))
    with pytest.raises(ValueError, match="`sample_weight` must be non-negative"):
        SoftmaxRegression().fit(X, y, sample_weight=-np.ones(150))
    with pytest.raises(ValueError, match=r"unknown solver 'newton'; choose one of auto, lbfgs, newton-cg, owlqn, adam, sgd"):
        SoftmaxRegression(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="solver='lbfgs' is full-batch"):
        SoftmaxRegression(solver="lbfgs", batch_size=8).fit(X, y)
    with pytest.raises(ValueError, match="`C` must be a positive number"):
        SoftmaxRegression(C=0).fit(X, y)
    model = SoftmaxRegression(max_iter=1000).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but SoftmaxRegression is expecting 4"):
        model.predict(X[:, :3])


def test_float32_dtype():
    X, y = datasets.load_digits(return_X_y=True)
    model = SoftmaxRegression(dtype="float32", standardize=True, tol=1e-3).fit(X, y)
    assert model.score(X, y) > 0.98
    assert model.predict_proba(X[:2]).dtype == np.float64  # scikit-learn's convention


def test_float64_fit_does_not_leak_x64():
    # The float64 estimator computes inside a scoped x64 switch; the flag itself must be back
    # to what it was after fit, predict and a failing fit alike.
    import jax
    import jax.numpy as jnp

    assert not jax.config.jax_enable_x64
    X, y = datasets.load_iris(return_X_y=True)
    model = SoftmaxRegression(dtype="float64", max_iter=1000).fit(X, y)
    model.predict_proba(X)

    def boom(info):
        raise RuntimeError("stop inside the float64 fit")

    with pytest.raises(RuntimeError, match="stop inside"):
        SoftmaxRegression(dtype="float64", max_iter=50).fit(X, y, callback=boom)
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(1).dtype == jnp.float32


def _compiled_programs() -> int:
    from jsoftmax.train import drive, lbfgs

    return sum(f._cache_size() for f in (lbfgs.start, lbfgs.segment, drive.metrics, drive.grad_inf_norm))


@pytest.mark.parametrize("buckets", [True, False])
def test_a_new_number_of_rows_in_the_same_bucket_reuses_the_program(monkeypatch, buckets):
    from jsoftmax.sklearn import common

    if not buckets:
        monkeypatch.setattr(common, "ROW_BUCKET_MAX_BYTES", 0)
    X, y = datasets.load_iris(return_X_y=True)
    model = SoftmaxRegression(solver="lbfgs", standardize=True, tol=1e-8)
    model.fit(X[:140], y[:140])
    before = _compiled_programs()
    model.fit(X[:137], y[:137])  # bucket 144 holds 129..144 rows
    assert (_compiled_programs() == before) == buckets


def test_padded_rows_leave_the_fit_unchanged(monkeypatch):
    from jsoftmax.sklearn import common

    X, y = datasets.load_iris(return_X_y=True)
    X, y = X[:137], y[:137]
    weights = np.linspace(0.5, 2.0, 137)
    model = SoftmaxRegression(solver="newton-cg", standardize=True, tol=1e-10, dtype="float64")
    padded = clone(model).fit(X, y, sample_weight=weights)
    monkeypatch.setattr(common, "ROW_BUCKET_MAX_BYTES", 0)
    plain = clone(model).fit(X, y, sample_weight=weights)
    assert padded.optimality_["converged"] and plain.optimality_["converged"]
    # Both converged to the same optimum; the padded rows changed only the summation order.
    np.testing.assert_allclose(padded.coef_, plain.coef_, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(padded.intercept_, plain.intercept_, rtol=1e-8, atol=1e-9)
    assert padded.objective(X, y, weights) == pytest.approx(plain.objective(X, y, weights), rel=1e-13)


def test_row_bucket_pads_at_most_an_eighth():
    from jsoftmax.sklearn.common import row_bucket

    sizes = np.arange(1, 20000)
    buckets = np.array([row_bucket(int(n)) for n in sizes])
    assert np.all(buckets >= sizes) and np.all(buckets <= np.maximum(64, np.ceil(sizes * 1.125)))
    assert len(np.unique(buckets)) < 100  # few programs for many sizes


def test_model_files_from_before_devices_load_and_devices_are_not_saved(tmp_path):
    # `devices` says where a fit runs, not what the model is: saved as None, and a file written
    # before the hyperparameter existed loads with its default.
    from jsoftmax.io import files

    X, y = datasets.load_iris(return_X_y=True)
    model = SoftmaxRegression(standardize=True, devices=1).fit(X, y)
    model.save(tmp_path / "m.npz")
    arrays, meta = files.load_npz(tmp_path / "m.npz", kind="model")
    assert meta["params"]["devices"] is None
    del meta["params"]["devices"]
    files.atomic_save_npz(tmp_path / "old.npz", arrays, meta)
    old = SoftmaxRegression.load(tmp_path / "old.npz")
    assert old.devices is None
    np.testing.assert_array_equal(old.predict(X), model.predict(X))
