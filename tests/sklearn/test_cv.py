"""SoftmaxRegressionCV and fit_many: the C × fold search in compiled, vmapped solves."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

import jsoftmax
from jsoftmax import SoftmaxRegression, SoftmaxRegressionCV

from ..helpers import make_problem


def _sklearn_cv(X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's legacy-attribute notices
        return LogisticRegressionCV(**kwargs).fit(X, y)


@pytest.mark.parametrize("name", ["iris", "wine", "digits", "breast_cancer"])
def test_same_choice_and_scores_as_logistic_regression_cv(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    folds = StratifiedKFold(4)
    theirs = _sklearn_cv(X, y, Cs=6, cv=folds, tol=1e-6, max_iter=1000)
    ours = SoftmaxRegressionCV(Cs=6, cv=folds, tol=1e-6, max_iter=1000).fit(X, y)
    np.testing.assert_array_equal(ours.C_, theirs.C_)
    np.testing.assert_array_equal(ours.Cs_, theirs.Cs_)
    assert list(ours.scores_) == list(theirs.scores_)
    regularised = theirs.Cs_ <= 100  # beyond, the objective is nearly flat: both fits stop at tol
    for key in theirs.scores_:
        # a fold's accuracy may differ by a sample where a barely converged fit ties
        np.testing.assert_allclose(ours.scores_[key][:, regularised], theirs.scores_[key][:, regularised],
                                   atol=3e-3)
        assert ours.coefs_paths_[key].shape == theirs.coefs_paths_[key].shape
    assert ours.n_iter_.shape == theirs.n_iter_.shape
    assert np.mean(ours.predict(X) == theirs.predict(X)) >= 0.99
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=2e-3)


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_fit_many_equals_one_fit_per_model(x64, solver):
    W, b, X, y = make_problem(150, 4, 3, seed=6, bias=True)
    rng = np.random.default_rng(1)
    weights = (rng.random((5, 150)) > 0.3) * rng.uniform(0.5, 2, (5, 150))
    l2 = np.logspace(-3, 0, 5)
    start = jsoftmax.Params(jnp.zeros((5, 4, 3)), jnp.zeros((5, 3)))
    many = jsoftmax.fit_many(start, X, y, sample_weights=weights, l2=l2, solver=solver, tol=1e-10, max_iter=400)
    assert many.converged.all() and many.params.W.shape == (5, 4, 3)
    for j in range(5):
        one = jsoftmax.fit(jsoftmax.Params(jnp.zeros((4, 3)), jnp.zeros(3)), X, y, solver=solver,
                           sample_weight=weights[j], l2=l2[j], tol=1e-10, max_iter=400)
        np.testing.assert_allclose(many.params.W[j], one.params.W, atol=1e-8)
        assert many.n_iter[j] == one.n_iter  # each model stops on its own
        np.testing.assert_allclose(many.value[j], jsoftmax.risk(one.params, X, y, sample_weight=weights[j], l2=l2[j]))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(sample_weights=np.ones((3, 20)), l2=np.ones(2)), r"`l2` must have shape \(M,\) = \(3,\)"),
    (dict(sample_weights=np.ones((3, 19)), l2=np.ones(3)), "`sample_weight` must have shape"),
    (dict(sample_weights=np.ones((3, 20)), l2=-np.ones(3)), "`l2` must be finite and non-negative"),
    (dict(sample_weights=-np.ones((3, 20)), l2=np.ones(3)), "`sample_weights` must be finite and non-negative"),
    (dict(sample_weights=np.ones((3, 20)), l2=np.ones(3), solver="sag"), "unknown solver 'sag'"),
])
def test_fit_many_bad_input(x32, kwargs, message):
    W, _, X, y = make_problem(20, 3, 3, dtype=jnp.float32)
    with pytest.raises(ValueError, match=message):
        jsoftmax.fit_many(jnp.zeros((3, 3, 3)), X, y, **kwargs)


def test_fit_many_needs_a_model_axis(x32):
    W, _, X, y = make_problem(20, 3, 3, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"`params.W` must be \(M, D, K\)"):
        jsoftmax.fit_many(W, X, y, sample_weights=np.ones((1, 20)), l2=np.ones(1))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(Cs=[]), "`Cs` must be a non-empty list"),
    (dict(Cs=[1.0, -1.0]), "`Cs` must be a non-empty list of positive finite numbers"),
    (dict(Cs=[1.0, float("nan")]), "`Cs` must be a non-empty list of positive finite numbers"),
    (dict(Cs=0), "`Cs` must be a positive int"),
    (dict(cv=60), r"n_splits=60 cannot be greater than the number of members in each class"),
    (dict(cv=1), r"`cv`=1 folds need 2 ≤ cv"),
    (dict(cv=[(np.arange(150), np.array([], int))]), "`cv` fold 0 has an empty test set"),
    (dict(solver="adam"), "unknown solver 'adam'; choose one of lbfgs, newton-cg"),
])
def test_cv_bad_input(kwargs, message):
    X, y = datasets.load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=message):
        SoftmaxRegressionCV(**kwargs).fit(X, y)


def test_refit_false_standardize_and_newton():
    X, y = datasets.load_wine(return_X_y=True)
    model = SoftmaxRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3, refit=False, standardize=True, solver="newton-cg",
                                tol=1e-6).fit(X, y)
    # refit=False, as scikit-learn: each fold's best C; the mean of those Cs and coefficients
    scores = model.scores_[model.classes_[0]]
    best = np.argmax(scores, axis=1)
    np.testing.assert_allclose(model.C_, np.mean(model.Cs_[best]))
    fold_mean = np.stack([np.mean([path[i, j, :-1] for i, j in enumerate(best)], axis=0)
                          for path in model.coefs_paths_.values()])
    np.testing.assert_allclose(model.coef_, fold_mean, atol=1e-12)
    assert model.score(X, y) > 0.95 and model.scores_[model.classes_[0]].shape == (3, 3)


@pytest.mark.parametrize("estimator", [
    pytest.param(SoftmaxRegressionCV(Cs=2, cv=3, max_iter=50), id="SoftmaxRegressionCV"),
    pytest.param(SoftmaxRegression(max_iter=50), id="SoftmaxRegression", marks=pytest.mark.slow),
])
def test_estimators_pass_scikit_learns_checks(estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed, failed


def test_fold_scores_are_each_model_s_accuracy_on_its_test_rows_whatever_the_block(monkeypatch):
    from jsoftmax.sklearn import search

    X, y = datasets.load_iris(return_X_y=True)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    Cs = [0.05, 10.0]
    whole = SoftmaxRegressionCV(Cs=Cs, cv=folds, tol=1e-8, max_iter=1000).fit(X, y)
    monkeypatch.setattr(search, "SCORE_BLOCK_BYTES", 64)  # two rows of four float64 per block
    blocks = SoftmaxRegressionCV(Cs=Cs, cv=folds, tol=1e-8, max_iter=1000).fit(X, y)
    np.testing.assert_array_equal(blocks.scores_[0], whole.scores_[0])
    paths = np.stack([whole.coefs_paths_[c] for c in whole.classes_], axis=-1)  # (F, C, D + 1, K)
    for i, (_, test) in enumerate(folds):
        for j in range(len(Cs)):
            W, b = paths[i, j, :-1], paths[i, j, -1]
            accuracy = np.mean(np.argmax(X[test] @ W + b, axis=1) == y[test])
            assert whole.scores_[0][i, j] == pytest.approx(accuracy, abs=1e-12)
