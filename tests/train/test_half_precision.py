"""Features stored in half precision (bfloat16, float16) are fitted as stored: float32 (or
float64) parameters and accumulation, no widened copy of X (issue 24, §1)."""

import ml_dtypes
import numpy as np
import pytest

import jsoftmax

HALF = [ml_dtypes.bfloat16, np.float16]


def planted(n=4000, d=24, k=6, seed=0):
    """Features with a planted linear model, so that accuracy means something."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, k))
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = np.argmax(X @ W + rng.gumbel(size=(n, k)), axis=1)
    return X, y


@pytest.mark.parametrize("half", HALF)
def test_fit_takes_half_precision_x_with_float32_params(monkeypatch, half):
    from jsoftmax import _api

    X, y = planted()
    seen = []
    real = _api.prepare

    def spy(params, X, *args, **kwargs):
        problem = real(params, X, *args, **kwargs)
        seen.append(problem[0].X.dtype)
        return problem

    monkeypatch.setattr(_api, "prepare", spy)
    start = jsoftmax.Params(np.zeros((24, 6), np.float32), np.zeros(6, np.float32))
    low = jsoftmax.fit(start, X.astype(half), y, solver="lbfgs", l2=1e-3, tol=1e-4, max_iter=300)
    full = jsoftmax.fit(start, X, y, solver="lbfgs", l2=1e-3, tol=1e-4, max_iter=300)
    assert seen == [np.dtype(half), np.dtype(np.float32)]  # the fit's layout holds X as stored
    assert low.params.W.dtype == np.float32 and low.params.b.dtype == np.float32
    # The objective on the float32 values: the half-precision fit reaches the same optimum to
    # within its inputs' rounding (8 or 11 mantissa bits).
    objective = [float(jsoftmax.risk(fit.params, X, y, l2=1e-3)) for fit in (low, full)]
    assert objective[0] == pytest.approx(objective[1], rel=1e-3)


@pytest.mark.parametrize("half", HALF)
def test_estimators_keep_half_precision_x(monkeypatch, half):
    import jsoftmax.sklearn.estimator as estimator

    X, y = planted(seed=1)
    seen = []
    real = estimator.fit

    def spy(params, X, *args, **kwargs):
        seen.append(X.dtype)
        return real(params, X, *args, **kwargs)

    monkeypatch.setattr(estimator, "fit", spy)
    # bfloat16's gradient is exact to its 8 bits: a tolerance it can reach (at 1e-4 the fit
    # stalls at rounding level and says so with a ConvergenceWarning).
    low = jsoftmax.SoftmaxRegression(tol=1e-3).fit(X.astype(half), y)
    monkeypatch.undo()
    full = jsoftmax.SoftmaxRegression(tol=1e-4).fit(X, y)
    assert seen == [np.dtype(half)] and low.coef_.dtype == np.float32
    assert low.objective(X, y) == pytest.approx(full.objective(X, y), rel=1e-3)
    assert abs(low.score(X.astype(half), y) - full.score(X, y)) <= 0.01
    proba = low.predict_proba(X.astype(half)[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert low.decision_function(X.astype(half)[:5]).shape == (5, 6)
    search = jsoftmax.SoftmaxRegressionCV(Cs=3, cv=3, tol=1e-3).fit(X[:1500].astype(half), y[:1500])
    assert search.coef_.dtype == np.float32 and search.score(X[:1500].astype(half), y[:1500]) > 0.5


def test_float16_features_that_overflowed_are_refused_naming_the_column():
    X, y = planted(n=200, seed=2)
    X = X.astype(np.float16)
    X[7, 3] = np.inf  # a feature beyond float16's range when it was saved
    with pytest.raises(ValueError, match=r"`X` holds NaN or infinite values: column 3 \(row 7\)"):
        jsoftmax.SoftmaxRegression().fit(X, y)
    model = jsoftmax.SoftmaxRegression(max_iter=20).fit(planted(n=200, seed=2)[0].astype(np.float16), y)
    with pytest.raises(ValueError, match="column 3"):
        model.predict(X)
