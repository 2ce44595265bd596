"""Standardisation folded into the weights: the same fit as on a scaled copy of X, without it."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

import jsoftmax
from jsoftmax import SoftmaxRegression
from jsoftmax.sklearn.common import column_moments

from ..helpers import make_problem


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
@pytest.mark.parametrize("bias", [True, False])
def test_fit_with_feature_scaling_equals_fit_on_the_scaled_copy(x64, solver, bias):
    W, b, X, y = make_problem(300, 5, 4, seed=2, bias=True)
    X = X * jnp.array([1, 10, 0.1, 3, 1.0]) + jnp.array([5, -2, 0, 1, 100.0])
    mean, scale = np.asarray(X).mean(0), np.asarray(X).std(0)
    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b) if bias else None)
    copy = jsoftmax.fit(start, (X - mean) / scale, y, solver=solver, l2=1e-2, tol=1e-10, max_iter=500)
    folded = jsoftmax.fit(start, X, y, solver=solver, l2=1e-2, tol=1e-10, max_iter=500,
                          feature_mean=mean, feature_scale=scale)
    assert folded.stop_reason == "gtol" and folded.n_iter == copy.n_iter
    np.testing.assert_allclose(folded.params.W, copy.params.W, rtol=0, atol=1e-12)
    if bias:
        np.testing.assert_allclose(folded.params.b, copy.params.b, rtol=0, atol=1e-12)


def test_minibatch_fit_with_feature_scaling(x32):
    W, b, X, y = make_problem(256, 4, 3, seed=3, dtype=jnp.float32, bias=True)
    mean, scale = np.asarray(X).mean(0) + 1.0, np.asarray(X).std(0) * 2
    import optax

    start = jsoftmax.Params(jnp.zeros_like(W), jnp.zeros_like(b))
    copy = jsoftmax.fit(start, (X - mean) / scale, y, optax.sgd(0.1), batch_size=64, max_epochs=3)
    folded = jsoftmax.fit(start, X, y, optax.sgd(0.1), batch_size=64, max_epochs=3,
                          feature_mean=mean, feature_scale=scale)
    np.testing.assert_allclose(folded.params.W, copy.params.W, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("mean", "scale", "message"), [
    (None, np.zeros(4), "`feature_scale` must be positive"),
    (np.full(4, np.nan), None, "`feature_mean` must be 4 finite numbers"),
    (np.zeros(3), None, r"`feature_mean` must be 4 finite numbers \(one per feature\); got shape \(3,\)"),
    (None, -np.ones(4), "`feature_scale` must be positive"),
])
def test_bad_feature_scaling_is_named(x32, mean, scale, message):
    W, _, X, y = make_problem(16, 4, 3, dtype=jnp.float32)
    with pytest.raises(ValueError, match=message):
        jsoftmax.fit(W, X, y, feature_mean=mean, feature_scale=scale)


def test_estimator_standardize_equals_scaling_by_hand():
    X, y = load_wine(return_X_y=True)
    scaled = StandardScaler().fit_transform(X)
    by_hand = SoftmaxRegression(tol=1e-8, max_iter=500).fit(scaled, y)
    folded = SoftmaxRegression(standardize=True, tol=1e-8, max_iter=500).fit(X, y)
    np.testing.assert_allclose(folded.coef_, by_hand.coef_, atol=1e-6)
    np.testing.assert_allclose(folded.predict_proba(X), by_hand.predict_proba(scaled), atol=1e-8)
    np.testing.assert_allclose(folded.decision_function(X), by_hand.decision_function(scaled), atol=1e-6)
    np.testing.assert_allclose(np.exp(folded.predict_log_proba(X)), folded.predict_proba(X), atol=1e-10)


def test_float32_model_keeps_float32_data_without_a_float64_copy(monkeypatch):
    X, y = load_wine(return_X_y=True)
    X32 = X.astype(np.float32)
    seen = []
    import jsoftmax.sklearn.estimator as estimator

    real_fit = estimator.fit

    def spy(params, X, *args, **kwargs):
        seen.append(X.dtype)
        return real_fit(params, X, *args, **kwargs)

    monkeypatch.setattr(estimator, "fit", spy)
    model = SoftmaxRegression(dtype="float32", standardize=True, max_iter=50).fit(X32, y)
    assert seen == [jnp.float32] and model.score(X32, y) > 0.9


def test_column_moments_match_numpy_without_the_temporary():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 7)).astype(np.float32) * 50 + 1e4
    mean, std = column_moments(X, block_rows=128)
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, X.astype(np.float64).std(0), rtol=1e-10)
