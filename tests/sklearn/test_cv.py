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


@pytest.mark.parametrize("l1", [None, 0.02])
def test_fit_many_along_a_path_is_the_warm_started_sequence_in_one_program(x64, l1):
    from jsoftmax.train import many

    W, b, X, y = make_problem(150, 4, 3, seed=7, bias=True)
    weights = (np.random.default_rng(2).random((4, 150)) > 0.3).astype(float)
    l2 = np.outer([1.0, 0.1, 0.01], np.ones(4))  # (L, M): three rows of strengths
    l1s = None if l1 is None else np.full((3, 4), l1)
    start = jsoftmax.Params(jnp.zeros((4, 4, 3)), jnp.zeros((4, 3)))
    path = jsoftmax.fit_many(start, X, y, sample_weights=weights, l2=l2, l1=l1s, tol=1e-10, max_iter=2000)
    assert path.params.W.shape == (3, 4, 4, 3) and path.n_iter.shape == (3, 4) and path.converged.all()
    compiled = many._fit_many_jit._cache_size()
    again = jsoftmax.fit_many(start, X, y, sample_weights=weights, l2=l2 * 2, l1=l1s, tol=1e-10, max_iter=2000)
    assert many._fit_many_jit._cache_size() == compiled and again.converged.all()  # new values: no new program
    params = start
    for row in range(3):  # the same as one call per row, each from the previous row's fits
        step = jsoftmax.fit_many(params, X, y, sample_weights=weights, l2=l2[row],
                                 l1=None if l1s is None else l1s[row], tol=1e-10, max_iter=2000)
        np.testing.assert_allclose(path.params.W[row], step.params.W, atol=1e-9)
        np.testing.assert_array_equal(path.n_iter[row], step.n_iter)
        params = step.params


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(sample_weights=np.ones((3, 20)), l2=np.ones(2)), r"`l2` must have shape \(M,\) = \(3,\)"),
    (dict(sample_weights=np.ones((3, 20)), l2=np.ones((2, 2))), r"or \(L, M\) = \(L, 3\) for a path; got \(2, 2\)"),
    (dict(sample_weights=np.ones((3, 20)), l2=np.ones((2, 3)), l1=np.ones(3)), r"`l1` must have `l2`'s shape \(2, 3\)"),
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
    (dict(Cs=[1.0, -1.0]), r"`Cs` must be a non-empty list of positive numbers \(np.inf: no penalty\)"),
    (dict(Cs=[1.0, float("nan")]), "`Cs` must be a non-empty list of positive numbers"),
    (dict(Cs=[-np.inf]), "`Cs` must be a non-empty list of positive numbers"),
    (dict(Cs=0), "`Cs` must be a positive int"),
    (dict(cv=60), r"n_splits=60 cannot be greater than the number of members in each class"),
    (dict(cv=1), r"`cv`=1 folds need 2 ≤ cv"),
    (dict(cv=[(np.arange(150), np.array([], int))]), "`cv` fold 0 has an empty test set"),
    (dict(solver="adam"), "unknown solver 'adam'; choose one of auto, lbfgs, newton-cg, owlqn"),
    (dict(l1_ratios=[]), r"`l1_ratios` must be None or a non-empty list of numbers in \[0, 1\]; got \[\]"),
    (dict(l1_ratios=[0.5, 1.5]), r"`l1_ratios` must be None .*; got \[0.5, 1.5\]"),
    (dict(l1_ratios=[float("nan")]), r"`l1_ratios` must be None .*; got \[nan\]"),
    (dict(l1_ratios=[-0.1]), r"`l1_ratios` must be None .*; got \[-0.1\]"),
    (dict(l1_ratios=0.5), r"`l1_ratios` must be None .*; got 0.5"),
    (dict(l1_ratios="l1"), r"`l1_ratios` must be None .*; got 'l1'"),
    (dict(l1_ratios=[True]), r"`l1_ratios` must be None .*; got \[True\]"),
    (dict(l1_ratios=[0.0, 0.5], solver="lbfgs"),
     r"solver='lbfgs' cannot fit l1_ratios=\[0.0, 0.5\] \(an L1 penalty\); use solver='auto' or one of 'owlqn'"),
    (dict(l1_ratios=[1.0], solver="newton-cg"), r"solver='newton-cg' cannot fit l1_ratios=\[1.0\]"),
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


def _l1_problem(n_classes):
    if n_classes == 3:
        X, y = datasets.load_wine(return_X_y=True)
    else:
        X, y = datasets.make_classification(n_samples=150, n_features=8, n_informative=4, random_state=0)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize("n_classes", [2, 3])
def test_l1_ratios_grid_matches_logistic_regression_cv_with_saga(n_classes):
    X, y = _l1_problem(n_classes)
    # Cs where no fold's model is all zeros: there saga's stopping rule (the coefficients' change
    # relative to the largest) leaves the intercept short of its optimum
    folds, Cs, ratios = StratifiedKFold(3), [0.2, 2.0], [0.5, 1.0]
    theirs = _sklearn_cv(X, y, Cs=Cs, l1_ratios=ratios, cv=folds, solver="saga", tol=1e-10, max_iter=100_000,
                         scoring="neg_log_loss")
    ours = SoftmaxRegressionCV(Cs=Cs, l1_ratios=ratios, cv=folds, tol=1e-10, max_iter=1000,
                               scoring="neg_log_loss").fit(X, y)
    np.testing.assert_array_equal(ours.C_, theirs.C_)
    np.testing.assert_array_equal(ours.l1_ratio_, theirs.l1_ratio_)
    np.testing.assert_array_equal(ours.l1_ratios_, theirs.l1_ratios_)
    assert list(ours.scores_) == list(theirs.scores_) and list(ours.coefs_paths_) == list(theirs.coefs_paths_)
    assert ours.n_iter_.shape == theirs.n_iter_.shape == (1, 3, 2, 2)
    for key in theirs.scores_:
        assert ours.scores_[key].shape == theirs.scores_[key].shape == (3, 2, 2)
        np.testing.assert_allclose(ours.scores_[key], theirs.scores_[key], rtol=1e-6)
        assert ours.coefs_paths_[key].shape == theirs.coefs_paths_[key].shape
        np.testing.assert_allclose(ours.coefs_paths_[key], theirs.coefs_paths_[key], atol=1e-6)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-6)
    # the same zeros, and ours exact
    assert np.array_equal(ours.coef_ == 0, np.abs(theirs.coef_) < 1e-8)


def test_each_grid_point_is_the_fit_on_its_fold(x64):
    X, y = _l1_problem(3)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=1).split(X, y))
    Cs, ratios = [0.1, 1.0], [0.0, 0.3, 1.0]
    search = SoftmaxRegressionCV(Cs=Cs, l1_ratios=ratios, cv=folds, tol=1e-10, max_iter=1000).fit(X, y)
    paths = np.stack([search.coefs_paths_[c] for c in search.classes_], axis=-1)  # (F, C, R, D + 1, K)
    for i, (train, _) in enumerate(folds):
        for j, C in enumerate(Cs):
            for r, ratio in enumerate(ratios):
                alone = SoftmaxRegression(C=C, l1_ratio=ratio, tol=1e-10, max_iter=1000).fit(X[train], y[train])
                np.testing.assert_allclose(paths[i, j, r, :-1], alone.coef_.T, atol=1e-7)
                np.testing.assert_allclose(paths[i, j, r, -1], alone.intercept_, atol=1e-7)
                assert np.array_equal(paths[i, j, r, :-1] == 0, alone.coef_.T == 0)


@pytest.mark.parametrize("refit", [True, False])
def test_l1_ratio_choice_follows_logistic_regression_cv(refit):
    X, y = _l1_problem(3)
    search = SoftmaxRegressionCV(Cs=[0.01, 0.1, 1.0], l1_ratios=[0.0, 0.5, 1.0], cv=3, refit=refit,
                                 scoring="neg_log_loss", tol=1e-8).fit(X, y)
    scores = search.scores_[0]  # (F, C, R)
    if refit:  # the best sum over the folds, flattened C-major: ties to the smaller C, then the earlier ratio
        j, r = np.unravel_index(np.argmax(scores.sum(axis=0)), scores.shape[1:])
        np.testing.assert_array_equal(search.C_, np.full(3, search.Cs_[j]))
        np.testing.assert_array_equal(search.l1_ratio_, np.full(3, search.l1_ratios_[r]))
        assert search.best_estimator_.l1_ratio == search.l1_ratio_[0]
    else:  # each fold's own best pair; the Cs, the ratios and the coefficients averaged
        j, r = np.unravel_index(np.argmax(scores.reshape(3, -1), axis=1), scores.shape[1:])
        np.testing.assert_allclose(search.C_, np.mean(search.Cs_[j]))
        np.testing.assert_allclose(search.l1_ratio_, np.mean(search.l1_ratios_[r]))
        paths = np.stack([search.coefs_paths_[c] for c in search.classes_])  # (K, F, C, R, D + 1)
        np.testing.assert_allclose(search.coef_, paths[:, np.arange(3), j, r, :-1].mean(axis=1), atol=1e-12)


def test_l1_ratios_search_is_one_program_run_once(monkeypatch):
    from jsoftmax.sklearn import search as search_module
    from jsoftmax.train import many

    calls = []
    monkeypatch.setattr(search_module, "fit_many", lambda *a, **kw: calls.append(kw["l2"].shape) or many.fit_many(*a, **kw))
    X, y = _l1_problem(3)
    search = SoftmaxRegressionCV(Cs=[0.01, 0.1, 1.0], l1_ratios=[0.2, 1.0], cv=3)
    search.fit(X, y)
    assert calls == [(3, 6)]  # the whole grid in one call: (Cs, ratios × folds)
    before = many._fit_many_jit._cache_size()
    search.set_params(Cs=[0.02, 0.3, 3.0], l1_ratios=[0.7, 0.9]).fit(X[::-1], y[::-1])  # new values, same shapes
    assert many._fit_many_jit._cache_size() == before


def test_l1_ratios_none_keeps_the_l2_layout_and_l1_ratio_zero():
    X, y = _l1_problem(3)
    search = SoftmaxRegressionCV(Cs=2, cv=3).fit(X, y)
    assert search.scores_[0].shape == (3, 2) and search.n_iter_.shape == (1, 3, 2)
    np.testing.assert_array_equal(search.l1_ratios_, [0.0])
    np.testing.assert_array_equal(search.l1_ratio_, [0.0, 0.0, 0.0])
    assert search.best_estimator_.solver == "lbfgs"


def test_c_inf_in_the_grid_is_no_penalty():
    # labels with noise and no redundant feature: the unpenalised maximum likelihood exists (no
    # separation) and is unique up to the softmax's shift
    X, y = datasets.make_classification(n_samples=300, n_features=5, n_informative=3, n_redundant=0, n_classes=3,
                                        flip_y=0.3, random_state=0)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    search = SoftmaxRegressionCV(Cs=[1.0, np.inf], l1_ratios=[0.5], cv=folds, tol=1e-10, max_iter=2000,
                                 refit=False).fit(X, y)
    train = folds[0][0]
    alone = SoftmaxRegression(C=np.inf, tol=1e-10, max_iter=2000).fit(X[train], y[train])
    unpenalised = np.stack([search.coefs_paths_[c][0, 1, 0] for c in search.classes_])  # (K, D + 1)
    alone_full = np.column_stack([alone.coef_, alone.intercept_])
    # without a penalty the softmax fixes W only up to a shift shared by the classes
    np.testing.assert_allclose(unpenalised - unpenalised.mean(axis=0), alone_full - alone_full.mean(axis=0), atol=1e-6)
