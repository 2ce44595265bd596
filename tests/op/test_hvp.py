"""The analytic Hessian-vector product against forward-over-reverse autodiff of the plain risk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jsoftmax
from jsoftmax._reference import reference_risk
from jsoftmax._verify import random_problem

from ..helpers import rtol


def _reference_hvp(params, X, labels, V, sample_weight, l2, smoothing):
    """jax.jvp of jax.grad of the plain-jnp risk, in float64: (H_W, H_b or None)."""
    with jax.enable_x64(True):
        def cast(a):
            return None if a is None else jnp.asarray(a, jnp.float64)

        X64, w64 = cast(X), cast(sample_weight)
        y64 = cast(labels) if labels.ndim == 2 else labels

        def gradient(W, b):
            return jax.grad(lambda W, b: reference_risk(W, b, X64, y64, sample_weight=w64, l2=l2,
                                                        label_smoothing=smoothing), argnums=(0, 1))(W, b)

        if params.b is None:
            HW = jax.jvp(lambda W: gradient(W, None)[0], (cast(params.W),), (cast(V.W),))[1]
            return np.asarray(HW), None
        HW, Hb = jax.jvp(gradient, (cast(params.W), cast(params.b)), (cast(V.W), cast(V.b)))[1]
        return np.asarray(HW), np.asarray(Hb)


def _direction(params, seed):
    rng = np.random.default_rng(seed + 100)
    dtype = params.W.dtype
    return jsoftmax.Params(jnp.asarray(rng.standard_normal(params.W.shape), dtype),
                           None if params.b is None else jnp.asarray(rng.standard_normal(params.b.shape), dtype))


def _normwise(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 6), k=st.integers(2, 7), bias=st.booleans(),
       weights=st.booleans(), ignore=st.booleans(), soft=st.booleans(),
       l2=st.sampled_from([0.0, 0.3]), smoothing=st.sampled_from([0.0, 0.2]),
       chunk=st.sampled_from([None, 1, 3, 16]), seed=st.integers(0, 2**16))
def test_hvp_equals_forward_over_reverse_autodiff_float64(n, d, k, bias, weights, ignore, soft, l2,
                                                          smoothing, chunk, seed):
    with jax.enable_x64(True):
        params, X, labels, sw = random_problem(n, d, k, seed=seed, bias=bias, weights=weights,
                                               ignore=ignore and not soft, soft=soft)
        if ignore and not soft and n == 1:
            labels = labels.at[0].set(0)
        V = _direction(params, seed)
        H = jsoftmax.hvp(params, X, labels, V, sample_weight=sw, l2=l2, label_smoothing=smoothing,
                         chunk_rows=chunk)
    HW, Hb = _reference_hvp(params, X, labels, V, sw, l2, smoothing)
    assert _normwise(H.W, HW) <= 1e-12
    if bias:
        assert _normwise(H.b, Hb) <= 1e-12
    else:
        assert H.b is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hvp_lower_precision_against_float64(dtype, x32):
    params, X, labels, sw = random_problem(64, 8, 5, dtype=dtype, bias=True, weights=True, seed=3)
    V = _direction(params, 3)
    H = jsoftmax.hvp(params, X, labels, V, sample_weight=sw, l2=0.1)
    assert H.W.dtype == jnp.dtype(dtype)
    HW, Hb = _reference_hvp(params, X, labels, V, sw, 0.1, 0.0)
    tol = {"float32": 1e-5, "bfloat16": 2e-2}[dtype]
    assert _normwise(H.W, HW) <= tol and _normwise(H.b, Hb) <= tol


def test_bare_weights_in_bare_weights_out(x64):
    params, X, labels, _ = random_problem(10, 3, 4, seed=1)
    V = _direction(params, 1)
    H = jsoftmax.hvp(params.W, X, labels, V.W)
    np.testing.assert_allclose(H, _reference_hvp(params, X, labels, V, None, 0.0, 0.0)[0], rtol=rtol(jnp.float64))


def test_hvp_is_linear_in_V_and_symmetric(x64):
    params, X, labels, _ = random_problem(30, 4, 5, seed=2, bias=True)
    U, V = _direction(params, 1), _direction(params, 2)
    HU, HV = jsoftmax.hvp(params, X, labels, U), jsoftmax.hvp(params, X, labels, V)
    combo = jsoftmax.Params(2 * U.W - V.W, 2 * U.b - V.b)
    H = jsoftmax.hvp(params, X, labels, combo)
    np.testing.assert_allclose(H.W, 2 * HU.W - HV.W, rtol=1e-12, atol=1e-14)
    uHv = jnp.vdot(U.W, HV.W) + jnp.vdot(U.b, HV.b)
    vHu = jnp.vdot(V.W, HU.W) + jnp.vdot(V.b, HU.b)
    np.testing.assert_allclose(uHv, vHu, rtol=1e-12)


@pytest.mark.parametrize(("make_V", "error", "message"), [
    (lambda p: p.W, TypeError, "`V` must be a jsoftmax.Params like `params`; got ArrayImpl"),
    (lambda p: jsoftmax.Params(p.W, None), ValueError, r"`V.b` must be an array of shape \(4,\)"),
    (lambda p: jsoftmax.Params(p.W[:, :2], p.b), ValueError, r"`V.W` must have the shape of the parameters, \(3, 4\); got \(3, 2\)"),
    (lambda p: jsoftmax.Params(p.W.astype(jnp.float16), p.b), TypeError, "`V.W` dtype must match the parameters"),
    (lambda p: jsoftmax.Params(jnp.ones((3, 4), jnp.int32), p.b), TypeError, "`V.W` must have a floating dtype"),
    (lambda p: (p.W, p.b), TypeError, "`V` must be a jsoftmax.Params like `params`; got tuple"),
])
def test_bad_directions_are_named(x32, make_V, error, message):
    params, X, labels, _ = random_problem(6, 3, 4, dtype="float32", bias=True)
    with pytest.raises(error, match=message):
        jsoftmax.hvp(params, X, labels, make_V(params))


def test_a_params_direction_for_bare_weights_is_refused(x32):
    params, X, labels, _ = random_problem(6, 3, 4, dtype="float32")
    with pytest.raises(TypeError, match=r"`V` must be a \(D, K\) array like the bare `params`; got Params"):
        jsoftmax.hvp(params.W, X, labels, params)
