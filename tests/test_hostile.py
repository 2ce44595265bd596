"""Hostile inputs: each case asserts the exact behaviour (the correct value, or an error type and
message). Grouped by the classes of failure of the hardening issue; more classes follow."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jsoftmax

from .helpers import make_problem


# --- Numerical cancellation: large scores, small losses -----------------------------------


def float64_loss_of(b, y):
    """Mean -log softmax(b)[y] of the float32 scores b, in float64 from shifted scores."""
    z = np.asarray(b, np.float64)
    log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
    return float(np.mean(-log_p[np.asarray(y)]))


@pytest.mark.parametrize("offset", [1e4, 1e6, -1e6])
@pytest.mark.parametrize("chunking", [dict(), dict(chunk_size=2, class_chunk_size=2)])
def test_small_loss_at_large_scores_does_not_cancel(offset, chunking):
    # Scores 1e4 (or 1e6) apart from zero but 0.5 apart from each other: lse - z_y would lose
    # every digit of the loss to the rounding of lse; the engine sums relative to the maximum.
    b = jnp.asarray([offset, offset + 0.5, offset + 1.0], jnp.float32)
    X, W = jnp.zeros((4, 2), jnp.float32), jnp.zeros((2, 3), jnp.float32)
    y = jnp.asarray([2, 1, 0, 2])
    expected = float64_loss_of(b, y)
    got = jsoftmax.linear_cross_entropy(X, W, y, bias=b, **chunking)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    np.testing.assert_allclose(float(jsoftmax.risk(jsoftmax.Params(W, b), X, y)), expected, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_gradient_at_large_scores_matches_float64(scale):
    W, b, X, y = make_problem(32, 6, 5, seed=3, dtype=jnp.float32, bias=True, scale=scale)
    grad = jsoftmax.risk_grad(jsoftmax.Params(W, b), X, y)
    z = np.asarray(X, np.float64) @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = np.asarray(X, np.float64).T @ (p - np.eye(5)[np.asarray(y)]) / 32
    assert np.all(np.isfinite(np.asarray(grad.W)))
    np.testing.assert_allclose(np.asarray(grad.W, np.float64), expected, atol=1e-5)


# --- Fits that fail must say so -----------------------------------------------------------


def test_bfloat16_full_batch_lbfgs_trains_with_float32_state():
    # optax.lbfgs on bfloat16 params died inside optax ("cond branches must have equal output
    # types"); 16-bit params now train as float32 masters and come back in bfloat16.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = rng.integers(0, 3, 300)
    X[np.arange(300), y] += 2
    fits = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        start = jsoftmax.Params(jnp.zeros((4, 3), dtype), jnp.zeros(3, dtype))
        fits[dtype] = jsoftmax.fit(start, jnp.asarray(X, dtype), jnp.asarray(y), optax.lbfgs(),
                                   l2=0.01, tol=1e-3, max_iter=100)
    low = fits[jnp.bfloat16]
    assert low.params.W.dtype == jnp.bfloat16 and low.params.b.dtype == jnp.bfloat16
    assert low.stop_reason == "gtol" and low.converged
    # bfloat16 data carries 8 bits: the same optimum to within its rounding.
    np.testing.assert_allclose(low.history["loss"][-1], fits[jnp.float32].history["loss"][-1], rtol=1e-2)


def test_nan_gradient_is_divergence_not_max_iter():
    X, y = jnp.ones((6, 2), jnp.float32), jnp.asarray([0, 1, 0, 1, 0, 1])
    start = jsoftmax.Params(jnp.zeros((2, 2), jnp.float32), jnp.zeros(2, jnp.float32))
    result = jsoftmax.fit(start, X * 1e30, y, optax.sgd(1e30), max_iter=20)
    assert result.stop_reason == "diverged" and not result.converged
