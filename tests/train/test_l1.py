"""The L1 and elastic-net penalties (``jsoftmax/train/owlqn.py``, ``docs/derivation.md`` §14):
OWL-QN reaches the KKT conditions, checked against an independent computation (autodiff of a
plain NumPy-style objective and the subdifferential written out), with exact zeros; it is
L-BFGS without the L1 term; the estimators' ``l1_ratio`` is scikit-learn's objective, at an
objective no higher than scikit-learn's saga and with the same support; hostile options refused."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import jsoftmax


def _wine():
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _smooth_gradient(W, b, X, y, l2):
    """∂f of f = mean cross-entropy + l2/2‖W‖², by jax.grad of a plain formula (not the library's)."""
    def f(W, b):
        logp = jax.nn.log_softmax(X @ W + b, axis=1)
        return -jnp.mean(logp[jnp.arange(len(y)), y]) + 0.5 * l2 * jnp.sum(W**2)

    return jax.grad(f, argnums=(0, 1))(W, b)


def _kkt_violation(W, b, X, y, l1, l2) -> float:
    """The KKT conditions of §14, entry by entry, from the independent gradient."""
    gW, gb = (np.asarray(g) for g in _smooth_gradient(jnp.asarray(W), jnp.asarray(b), jnp.asarray(X),
                                                        jnp.asarray(y), l2))
    W = np.asarray(W)
    nonzero = np.abs(gW + l1 * np.sign(W))[W != 0]
    zero = np.maximum(np.abs(gW) - l1, 0.0)[W == 0]
    return float(max(nonzero.max(initial=0.0), zero.max(initial=0.0), np.abs(gb).max()))


@pytest.mark.parametrize("l1, l2", [(0.02, 0.0), (0.01, 0.01), (0.002, 0.0)])
def test_owlqn_reaches_the_kkt_conditions_with_exact_zeros(x64, l1, l2):
    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    result = jsoftmax.fit(start, X, y, l1=l1, l2=l2, tol=1e-9, max_iter=5000)
    assert result.converged and result.stop_reason == "gtol"
    W = np.asarray(result.params.W)
    assert np.any(W == 0.0) and np.any(W != 0.0)  # a sparse model, its zeros exact
    assert not np.any((W != 0) & (np.abs(W) < 1e-12))  # no 1e-17 stand-ins for zero
    assert result.grad_norm <= 1e-9
    assert _kkt_violation(W, result.params.b, X, y, l1, l2) <= 1e-8


def test_owlqn_without_l1_is_lbfgs(x64):
    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    ours = jsoftmax.fit(start, X, y, solver="owlqn", l2=0.01, tol=1e-10)
    lbfgs = jsoftmax.fit(start, X, y, solver="lbfgs", l2=0.01, tol=1e-10)
    assert ours.converged and lbfgs.converged
    # Both points have max|g| <= tol on an objective l2-strongly convex: each lies within
    # ‖g‖₂/l2 <= sqrt(42)·tol/l2 of the minimiser (their line searches differ: halving, quadratic).
    bound = 2 * np.sqrt(42) * 1e-10 / 0.01
    assert np.linalg.norm(np.asarray(ours.params.W) - np.asarray(lbfgs.params.W)) <= bound


def test_a_strength_above_lambda_max_gives_w_zero(x64):
    # λ₁,max = max |∇_W f| at W = 0 with the intercept fitted alone (§14).
    X, y = _wine()
    b_star = np.log(np.bincount(y) / len(y))
    gW, _ = _smooth_gradient(jnp.zeros((13, 3)), jnp.asarray(b_star), jnp.asarray(X), jnp.asarray(y), 0.0)
    lam_max = float(np.abs(gW).max())
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    above = jsoftmax.fit(start, X, y, l1=lam_max * 1.001, tol=1e-10)
    below = jsoftmax.fit(start, X, y, l1=lam_max * 0.95, tol=1e-10)
    assert np.all(np.asarray(above.params.W) == 0.0)
    assert np.count_nonzero(np.asarray(below.params.W)) >= 1


def test_sparse_x_and_standardised_features_give_the_dense_fit(x64):
    X, y = _wine()
    X[np.abs(X) < 0.5] = 0.0
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    dense = jsoftmax.fit(start, X, y, l1=0.005, l2=0.001, tol=1e-10, max_iter=5000)
    sparse = jsoftmax.fit(start, sp.csr_matrix(X), y, l1=0.005, l2=0.001, tol=1e-10, max_iter=5000)
    np.testing.assert_allclose(sparse.params.W, dense.params.W, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(sparse.params.W) == 0, np.asarray(dense.params.W) == 0)
    raw = X * 3.0 + 1.0  # standardisation folded into the weights: the same model on raw features
    folded = jsoftmax.fit(start, raw, y, l1=0.005, l2=0.001, tol=1e-10, max_iter=5000,
                          feature_mean=np.ones(13), feature_scale=np.full(13, 3.0))
    np.testing.assert_allclose(folded.params.W, dense.params.W, atol=1e-6)


def _sklearn_objective(model, X, y, C, rho) -> float:
    logp = model.predict_log_proba(X)
    data = -np.sum(logp[np.arange(len(y)), np.searchsorted(model.classes_, y)])
    coef = np.asarray(model.coef_, np.float64)
    return float(C * data + rho * np.abs(coef).sum() + 0.5 * (1 - rho) * np.sum(coef**2))


@pytest.mark.parametrize("loader", [_wine, lambda: (StandardScaler().fit_transform(load_breast_cancer().data),
                                                    load_breast_cancer().target)])
@pytest.mark.parametrize("C, rho", [(0.1, 1.0), (1.0, 0.5)])
def test_estimator_matches_scikit_learn_saga(loader, C, rho):
    X, y = loader()
    ours = jsoftmax.SoftmaxRegression(C=C, l1_ratio=rho, tol=1e-10, max_iter=20000).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LogisticRegression(C=C, l1_ratio=rho, solver="saga", tol=1e-10, max_iter=20000).fit(X, y)
    assert ours.optimality_["converged"] and ours.optimality_["kkt_violation"] <= 1e-10
    ours_f, theirs_f = _sklearn_objective(ours, X, y, C, rho), _sklearn_objective(theirs, X, y, C, rho)
    assert ours.objective(X, y) == pytest.approx(ours_f, rel=1e-12)  # the estimator's own, with the L1 term
    assert ours_f <= theirs_f * (1 + 1e-9), (ours_f, theirs_f)
    # The same support, up to coefficients below 1e-8.
    np.testing.assert_array_equal(np.abs(ours.coef_) > 1e-8, np.abs(theirs.coef_) > 1e-8)
    assert np.any(ours.coef_ == 0.0)


@pytest.mark.parametrize("l1, l2", [(0.01, 0.0), (0.01, 0.01), (0.05, 0.001)])
def test_duality_gap_bounds_the_distance_to_the_minimum(x64, l1, l2):
    # P(W) − min P ≤ gap at every stopping point, and the gap closes as the fit does
    from jsoftmax._penalty import duality_gap

    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))

    def primal(params):
        return float(jsoftmax.risk(params, X, y, l2=l2)) + l1 * float(np.abs(np.asarray(params.W)).sum())

    best = primal(jsoftmax.fit(start, X, y, l1=l1, l2=l2, tol=1e-13, max_iter=10_000).params)
    gaps = []
    for tol in (1e-2, 1e-4, 1e-6, 1e-9):
        fitted = jsoftmax.fit(start, X, y, l1=l1, l2=l2, tol=tol, max_iter=10_000).params
        gaps.append(duality_gap(fitted.W, fitted.b, X, np.eye(3)[y], np.ones(len(y)), l1, l2))
        assert primal(fitted) - best <= gaps[-1] + 1e-14
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] <= 1e-8
    # without an intercept, and with weights: still a bound that closes
    weights = np.linspace(0.5, 2.0, len(y))
    bare = jsoftmax.fit(start.W, X, y, sample_weight=weights, l1=l1, l2=l2, tol=1e-10, max_iter=10_000).params
    assert 0 <= duality_gap(bare, None, X, np.eye(3)[y], weights, l1, l2) <= 1e-8


def test_duality_gap_where_the_intercept_is_already_optimal_to_rounding():
    # Balanced classes, and a penalty that keeps the fit at W = 0, b = 0 (no iteration): ∇_b f is
    # rounding noise, whose quotient once made the intercept's repair 0/0 — a NaN gap and a
    # RuntimeWarning (found by scikit-learn's test_elastic_net_vs_l1_l2 through the shims)
    from sklearn.datasets import make_classification

    X, y = make_classification(500, random_state=0)
    rows = np.concatenate([np.flatnonzero(y == 0)[:150], np.flatnonzero(y == 1)[:150]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = jsoftmax.SoftmaxRegression(C=0.001, l1_ratio=0.25, tol=1e-2).fit(X[rows], y[rows])
    assert np.all(model.coef_ == 0) and model.intercept_[0] == 0
    assert 0 <= model.optimality_["duality_gap"] <= 1e-12  # W = 0, b = 0 is the minimum here


@pytest.mark.parametrize("sparse", [False, True])
def test_estimator_reports_the_duality_gap_of_its_own_problem(sparse):
    # standardised (sparse: scaled only), binary and multinomial: the gap of the problem solved
    X, y = _wine()
    X[np.abs(X) < 0.5] = 0.0
    X = sp.csr_matrix(X * 2.0 + (0.0 if sparse else 1.0)) if sparse else X * 2.0 + 1.0
    for labels in (y, (y == 1).astype(int)):
        loose = jsoftmax.SoftmaxRegression(C=0.5, l1_ratio=0.7, standardize=True, tol=1e-3).fit(X, labels)
        tight = jsoftmax.SoftmaxRegression(C=0.5, l1_ratio=0.7, standardize=True, tol=1e-10,
                                           max_iter=10_000).fit(X, labels)
        assert 0 <= tight.optimality_["duality_gap"] <= 1e-9 < loose.optimality_["duality_gap"]
        # the distance in scikit-learn's objective, C·Σs·(scaled objective): bounded by the gap
        distance = loose.objective(X, labels) - tight.objective(X, labels)
        assert distance <= 0.5 * len(labels) * loose.optimality_["duality_gap"] * (1 + 1e-9)
    assert "duality_gap" not in jsoftmax.SoftmaxRegression(C=0.5).fit(X, y).optimality_  # L2 alone


# --- hostile ----------------------------------------------------------------------------


def test_bad_l1_options_are_refused_naming_them():
    import optax

    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    for bad in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="`l1`"):
            jsoftmax.fit(start, X.astype(np.float32), y, l1=bad)
    with pytest.raises(ValueError, match="solver='lbfgs' does not handle an L1 penalty.*'owlqn'"):
        jsoftmax.fit(start, X.astype(np.float32), y, l1=0.01, solver="lbfgs")
    with pytest.raises(ValueError, match="an L1 penalty .* needs a solver that handles it .*'owlqn'"):
        jsoftmax.fit(start, X.astype(np.float32), y, optax.adam(0.1), l1=0.01)
    for bad in (-0.5, 1.5, np.nan, "l1", None):
        with pytest.raises(ValueError, match="l1_ratio"):
            jsoftmax.SoftmaxRegression(l1_ratio=bad).fit(X, y)
    with pytest.raises(ValueError, match="solver='newton-cg' cannot fit l1_ratio=0.5.*'owlqn'"):
        jsoftmax.SoftmaxRegression(l1_ratio=0.5, solver="newton-cg").fit(X, y)
    with pytest.raises(ValueError, match="cannot fit l1_ratio"):
        jsoftmax.SoftmaxRegression(l1_ratio=1.0, solver="adam", batch_size=16).fit(X, y)


def test_l1_ratio_with_c_inf_is_ignored_with_a_warning():
    X, y = _wine()
    with pytest.warns(UserWarning, match="l1_ratio=0.5 is ignored: C=inf"):
        ignored = jsoftmax.SoftmaxRegression(C=np.inf, l1_ratio=0.5, tol=1e-8, max_iter=2000).fit(X, y)
    plain = jsoftmax.SoftmaxRegression(C=np.inf, tol=1e-8, max_iter=2000).fit(X, y)
    np.testing.assert_array_equal(ignored.coef_, plain.coef_)


def test_model_files_keep_l1_ratio(tmp_path):
    X, y = _wine()
    model = jsoftmax.SoftmaxRegression(C=0.1, l1_ratio=1.0).fit(X, y)
    model.save(tmp_path / "m.npz")
    loaded = jsoftmax.SoftmaxRegression.load(tmp_path / "m.npz")
    assert loaded.l1_ratio == 1.0
    np.testing.assert_array_equal(loaded.coef_, model.coef_)


# --- paths and many models ----------------------------------------------------------------


def test_path_from_lambda_max_equals_cold_fits_and_meets_kkt(x64):
    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    path = jsoftmax.regularization_path(start, X, y, l1_ratio=0.7, n_strengths=6, min_ratio=0.01, tol=1e-10,
                                        max_iter=5000)
    assert path.support[0] == 0 and path.n_iter[0] == 0  # the null model is optimal at λ_max
    assert path.support[-1] > 0 and path.converged.all()
    np.testing.assert_allclose(path.strengths[0], path.lambda_max)
    assert np.all(np.diff(path.strengths) < 0)
    for i in (1, 3, 5):
        lam = path.strengths[i]
        l1, l2 = 0.7 * lam, 0.3 * lam
        W, b = np.asarray(path.params.W[i]), np.asarray(path.params.b[i])
        assert _kkt_violation(W, b, X, y, l1, l2) <= 1e-9
        cold = jsoftmax.fit(start, X, y, l1=l1, l2=l2, tol=1e-10, max_iter=5000)
        # Both meet the KKT conditions to 1e-10 on an objective l2-strongly convex.
        assert np.linalg.norm(np.asarray(cold.params.W) - W) <= 2 * np.sqrt(42) * 1e-10 / l2
        np.testing.assert_array_equal(np.asarray(cold.params.W) == 0, W == 0)
        assert path.objective[i] == pytest.approx(cold.history["loss"][-1], rel=1e-12)
        assert path.support[i] == np.count_nonzero(W)


def test_lambda_max_is_the_threshold_of_w_zero(x64):
    X, y = _wine()
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    top = jsoftmax.regularization_path(start, X, y, n_strengths=1).lambda_max
    at = jsoftmax.fit(start, X, y, l1=top * (1 + 1e-9), tol=1e-10)
    below = jsoftmax.fit(start, X, y, l1=top * 0.99, tol=1e-10)
    assert np.all(np.asarray(at.params.W) == 0) and np.count_nonzero(np.asarray(below.params.W)) >= 1


def test_path_is_one_program_and_runs_on_sparse_x(x64):
    from jsoftmax.train import path as path_module

    X, y = _wine()
    X[np.abs(X) < 0.5] = 0.0
    start = jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3))
    dense = jsoftmax.regularization_path(start, X, y, n_strengths=4, tol=1e-10, max_iter=5000)
    compiled = path_module._path_jit._cache_size()
    again = jsoftmax.regularization_path(start, X * 1.0, y, n_strengths=4, tol=1e-10, max_iter=5000)
    assert path_module._path_jit._cache_size() == compiled  # a new X of the same shapes: no new program
    np.testing.assert_array_equal(again.params.W, dense.params.W)
    sparse = jsoftmax.regularization_path(start, sp.csr_matrix(X), y, n_strengths=4, tol=1e-10, max_iter=5000)
    np.testing.assert_allclose(sparse.objective, dense.objective, rtol=1e-13)
    assert np.all(sparse.kkt_violation <= 1e-9) and np.all(dense.kkt_violation <= 1e-9)
    # W itself where the objective is curved enough to pin it: at the last strength (λ_max/1000,
    # pure L1, no L2) W moves ~4e-6 along a valley where the objective changes by 1e-15
    np.testing.assert_allclose(sparse.params.W[:3], dense.params.W[:3], atol=1e-7)
    np.testing.assert_array_equal(sparse.support, dense.support)


def test_fit_many_with_l1_equals_separate_fits(x64):
    X, y = _wine()
    l1s, l2s = np.array([0.02, 0.005, 0.0]), np.array([0.0, 0.001, 0.01])
    many = jsoftmax.fit_many(jsoftmax.Params(jnp.zeros((3, 13, 3)), jnp.zeros((3, 3))), X, y,
                             sample_weights=np.ones((3, len(y))), l2=l2s, l1=l1s, tol=1e-10, max_iter=5000)
    assert many.converged.all()
    for m in range(3):
        one = jsoftmax.fit(jsoftmax.Params(jnp.zeros((13, 3)), jnp.zeros(3)), X, y, l1=l1s[m], l2=l2s[m],
                           solver="owlqn", tol=1e-10, max_iter=5000)
        np.testing.assert_allclose(many.params.W[m], one.params.W, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(many.params.W[m]) == 0, np.asarray(one.params.W) == 0)


def test_bad_paths_are_refused():
    X, y = _wine()
    start = jsoftmax.Params(np.zeros((13, 3)), np.zeros(3))
    X = X.astype(np.float64)
    cases = [
        (dict(strengths=[]), "non-empty"),
        (dict(strengths=[0.1, 0.2]), "must decrease strictly"),
        (dict(strengths=[0.1, 0.1]), "must decrease strictly"),
        (dict(strengths=[0.1, -0.01]), "positive finite"),
        (dict(strengths=[np.nan]), "positive finite"),
        (dict(l1_ratio=0.0), "there is no λ_max"),
        (dict(l1_ratio=1.5), "`l1_ratio` must be a number in"),
        (dict(l1_ratio=np.nan), "`l1_ratio` must be a number in"),
        (dict(min_ratio=1.0), "`min_ratio`"),
        (dict(n_strengths=0), "n_strengths"),
    ]
    from jsoftmax._compat import enable_x64

    with enable_x64():
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                jsoftmax.regularization_path(start, X, y, **kwargs)
    with pytest.raises(ValueError, match="does not handle an L1 penalty"):
        jsoftmax.fit_many(jsoftmax.Params(np.zeros((1, 13, 3), np.float32), np.zeros((1, 3), np.float32)),
                          X.astype(np.float32), y, sample_weights=np.ones((1, len(y))), l2=np.zeros(1), l1=np.ones(1),
                          solver="newton-cg")
