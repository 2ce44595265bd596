"""The analytic gradient against jax.grad: grid, property-based, extensions, precisions, extremes."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jsoftmax
from jsoftmax._compat import enable_x64
from jsoftmax._reference import reference_risk

from ..helpers import (
    CompileCounter,
    assert_normwise_close,
    bias_risk,
    ignore_risk,
    l2_risk,
    make_problem,
    plain_risk,
    smoothed_risk,
    soft_risk,
    weighted_risk,
)
from ..helpers import rtol as rtol_of

GRID = list(itertools.product([(1, 3, 2), (17, 5, 3), (64, 12, 10)], [False, True], [False, True]))


@pytest.mark.parametrize(("shape", "bias", "soft"), GRID)
def test_grid_float64_matches_jax_grad(x64, shape, bias, soft):
    W, b, X, y = make_problem(*shape, seed=sum(shape), bias=bias, soft=soft)
    params = jsoftmax.Params(W, b)
    value, grad = jsoftmax.value_and_grad(params, X, y)
    ref_value, (gW, gb) = jax.value_and_grad(reference_risk, argnums=(0, 1))(W, b, X, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert_normwise_close(grad.W, gW, 1e-12, "dR/dW")
    if bias:
        assert_normwise_close(grad.b, gb, 1e-12, "dR/db")
    else:
        assert grad.b is None


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 12),
    k=st.integers(2, 12),
    bias=st.booleans(),
    soft=st.booleans(),
    weighted=st.booleans(),
    l2=st.sampled_from([0.0, 0.3]),
    smoothing=st.sampled_from([0.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_property_float64_matches_jax_grad(n, d, k, bias, soft, weighted, l2, smoothing, seed):
    with enable_x64():
        W, b, X, y = make_problem(n, d, k, seed=seed, bias=bias, soft=soft)
        rng = np.random.default_rng(seed + 1)
        s = jnp.asarray(rng.uniform(0.1, 3.0, n)) if weighted else None
        if not soft and n > 2:
            y = y.at[0].set(-100)  # at least one ignored row, at least one counted
        opts = dict(sample_weight=s, l2=l2, label_smoothing=smoothing)
        value, grad = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y, **opts)
        ref_value, ref_grad = jax.value_and_grad(reference_risk, argnums=(0, 1))(W, b, X, y, **opts)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        assert_normwise_close(grad.W, ref_grad[0], 1e-12, "dR/dW")
        if bias:
            assert_normwise_close(grad.b, ref_grad[1], 1e-12, "dR/db")


def test_check_grads_on_risk(x64):
    W, b, X, y = make_problem(9, 4, 5, seed=3, bias=True)

    def f(W, b, X):
        return jsoftmax.risk(jsoftmax.Params(W, b), X, y, l2=0.1, label_smoothing=0.1)

    check_grads(f, (W, b, X), order=1, modes=("rev",))


def test_jax_grad_of_risk_is_the_analytic_gradient(x64):
    W, b, X, y = make_problem(20, 6, 4, seed=1, bias=True)
    params = jsoftmax.Params(W, b)
    autodiff = jax.grad(jsoftmax.risk)(params, X, y, l2=0.2)
    analytic = jsoftmax.risk_grad(params, X, y, l2=0.2)
    assert isinstance(autodiff, jsoftmax.Params)
    np.testing.assert_allclose(autodiff.W, analytic.W, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(autodiff.b, analytic.b, rtol=1e-13, atol=1e-15)


def test_grad_of_risk_wrt_soft_labels_weights_and_l2(x64):
    W, _, X, Y = make_problem(12, 4, 3, seed=2, soft=True)
    s = jnp.linspace(0.5, 2.0, 12)

    def ours(Y, s, lam):
        return jsoftmax.risk(W, X, Y, sample_weight=s, l2=lam, label_smoothing=0.1)

    def ref(Y, s, lam):
        return reference_risk(W, None, X, Y, sample_weight=s, l2=lam, label_smoothing=0.1)

    got = jax.grad(ours, argnums=(0, 1, 2))(Y, s, 0.3)
    want = jax.grad(ref, argnums=(0, 1, 2))(Y, s, 0.3)
    for g, w, name in zip(got, want, ["labels", "sample_weight", "l2"]):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, err_msg=name)


def test_grad_wrt_label_smoothing_is_refused(x64):
    W, _, X, y = make_problem(5, 3, 3)
    with pytest.raises(TypeError, match="label_smoothing"):
        jax.grad(lambda e: jsoftmax.risk(W, X, y, label_smoothing=e))(0.1)


# --- Each extension against jax.grad of its own plain-jnp risk ---------------------------


def test_extension_plain(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=4)
    assert_normwise_close(jsoftmax.risk_grad(W, X, y), jax.grad(plain_risk)(W, X, y), 1e-12)


def test_extension_bias(x64):
    W, b, X, y = make_problem(30, 6, 5, seed=5, bias=True)
    grad = jsoftmax.risk_grad(jsoftmax.Params(W, b), X, y)
    gW, gb = jax.grad(bias_risk, argnums=(0, 1))(W, b, X, y)
    assert_normwise_close(grad.W, gW, 1e-12, "W")
    assert_normwise_close(grad.b, gb, 1e-12, "b")


def test_extension_inputs(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=6)
    got = jax.grad(lambda X: jsoftmax.risk(W, X, y))(X)
    assert_normwise_close(got, jax.grad(plain_risk, argnums=1)(W, X, y), 1e-12)


def test_extension_sample_weights(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=7)
    s = jnp.asarray(np.random.default_rng(0).uniform(0, 2, 30))
    got = jsoftmax.risk_grad(W, X, y, sample_weight=s)
    assert_normwise_close(got, jax.grad(weighted_risk)(W, X, y, s), 1e-12)


def test_extension_ignore_index(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=8)
    y = y.at[::4].set(7)
    got_value, got = jsoftmax.value_and_grad(W, X, y, ignore_index=7)
    np.testing.assert_allclose(got_value, ignore_risk(W, X, y, 7), rtol=1e-12)
    assert_normwise_close(got, jax.grad(ignore_risk)(W, X, y, 7), 1e-12)
    # Ignored rows leave the count too: same as dropping them.
    keep = np.asarray(y) != 7
    assert_normwise_close(got, jsoftmax.risk_grad(W, X[keep], y[keep]), 1e-12)


def test_extension_l2(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=9)
    got = jsoftmax.risk_grad(W, X, y, l2=0.7)
    assert_normwise_close(got, jax.grad(l2_risk)(W, X, y, 0.7), 1e-12)


def test_extension_label_smoothing(x64):
    W, _, X, y = make_problem(30, 6, 5, seed=10)
    got = jsoftmax.risk_grad(W, X, y, label_smoothing=0.3)
    assert_normwise_close(got, jax.grad(smoothed_risk)(W, X, y, 0.3), 1e-12)


def test_extension_soft_labels(x64):
    W, _, X, Y = make_problem(30, 6, 5, seed=11, soft=True)
    got = jsoftmax.risk_grad(W, X, Y)
    assert_normwise_close(got, jax.grad(soft_risk)(W, X, Y), 1e-12)


def test_soft_one_hot_rows_equal_integer_labels(x64):
    W, b, X, y = make_problem(25, 4, 6, seed=12, bias=True)
    Y = jax.nn.one_hot(y, 6, dtype=jnp.float64)
    v1, g1 = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y)
    v2, g2 = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, Y)
    np.testing.assert_allclose(v1, v2, rtol=1e-14)
    np.testing.assert_allclose(g1.W, g2.W, rtol=1e-12, atol=1e-15)


# --- Precisions --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_low_precision_against_float64_reference(dtype, soft):
    W, b, X, y = make_problem(128, 32, 20, seed=13, bias=True, dtype=dtype, soft=soft)
    value, grad = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y, l2=0.01)
    assert grad.W.dtype == dtype and grad.b.dtype == dtype
    assert value.dtype == jnp.float32  # accumulation dtype
    with enable_x64():
        c = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        y64 = c(y) if soft else y
        ref_value, ref_grad = jax.value_and_grad(reference_risk, argnums=(0, 1))(
            c(W), c(b), c(X), y64, l2=0.01
        )
    rtol = rtol_of(dtype)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=rtol)
    assert_normwise_close(grad.W, ref_grad[0], rtol, "dR/dW")
    assert_normwise_close(grad.b, ref_grad[1], rtol, "dR/db")


# --- Extremes ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_huge_scores_are_finite_and_correct(dtype):
    with enable_x64(dtype == jnp.float64):
        # Scores of order 1e4: a naive exp overflows, a stable log-sum-exp does not.
        X = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype)
        W = jnp.asarray([[1e4, -1e4, 0.0], [0.0, 5e3, -1e4]], dtype)
        y = jnp.asarray([1, 0, 2])
        value, grad = jsoftmax.value_and_grad(W, X, y)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        # Every prediction is essentially one-hot on argmax, so the loss is z_max - z_y.
        z = np.asarray(X, np.float64) @ np.asarray(W, np.float64)
        expected = np.mean(z.max(1) - z[np.arange(3), np.asarray(y)])
        np.testing.assert_allclose(float(value), expected, rtol=1e-6)
        p = np.eye(3)[z.argmax(1)]
        expected_grad = np.asarray(X, np.float64).T @ (p - np.eye(3)[np.asarray(y)]) / 3
        np.testing.assert_allclose(np.asarray(grad, np.float64), expected_grad, atol=1e-6)


def test_single_sample(x64):
    W, b, X, y = make_problem(1, 4, 3, seed=14, bias=True)
    grad = jsoftmax.risk_grad(jsoftmax.Params(W, b), X, y)
    ref = jax.grad(bias_risk, argnums=(0, 1))(W, b, X, y)
    assert_normwise_close(grad.W, ref[0], 1e-12)
    # One sample: dR/dW is the outer product x (p - y)^T (DERIVATION.md step 3).
    p = jax.nn.softmax(X[0] @ W + b)
    np.testing.assert_allclose(grad.W, np.outer(X[0], p - jax.nn.one_hot(y[0], 3)), rtol=1e-12)


def test_two_classes(x64):
    W, _, X, y = make_problem(40, 5, 2, seed=15)
    assert_normwise_close(jsoftmax.risk_grad(W, X, y), jax.grad(plain_risk)(W, X, y), 1e-12)


def test_fifty_thousand_classes(x64):
    W, b, X, y = make_problem(4, 3, 50_000, seed=16, bias=True)
    value, grad = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y)
    ref_value, ref = jax.value_and_grad(bias_risk, argnums=(0, 1))(W, b, X, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert_normwise_close(grad.W, ref[0], 1e-12, "W")
    assert_normwise_close(grad.b, ref[1], 1e-12, "b")


# --- Structure, prediction, compilation ---------------------------------------------------


def test_gradient_structure_follows_params(x64):
    W, b, X, y = make_problem(10, 3, 4, seed=17, bias=True)
    assert isinstance(jsoftmax.risk_grad(W, X, y), jax.Array)
    g = jsoftmax.risk_grad(jsoftmax.Params(W, b), X, y)
    assert isinstance(g, jsoftmax.Params) and g.W.shape == W.shape and g.b.shape == b.shape
    g = jsoftmax.risk_grad(jsoftmax.Params(W), X, y)
    assert isinstance(g, jsoftmax.Params) and g.b is None


def test_predict_and_predict_proba(x64):
    W, b, X, _ = make_problem(15, 4, 5, seed=18, bias=True)
    proba = jsoftmax.predict_proba(jsoftmax.Params(W, b), X)
    expected = jax.nn.softmax(X @ W + b, axis=1)
    np.testing.assert_allclose(proba, expected, rtol=1e-12)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(jsoftmax.predict(jsoftmax.Params(W, b), X), expected.argmax(1))


def test_same_shapes_compile_once():
    W, b, X, y = make_problem(37, 11, 13, seed=19, dtype=jnp.float32, bias=True)
    params = jsoftmax.Params(W, b)
    calls = {
        "value_and_grad": lambda X, y, v: jsoftmax.value_and_grad(params, X, y, l2=v),
        "risk": lambda X, y, v: jsoftmax.risk(params, X, y, label_smoothing=v),
        "jax.grad(risk)": lambda X, y, v: jax.grad(jsoftmax.risk)(params, X, y, l2=v),
        "linear_cross_entropy": lambda X, y, v: jsoftmax.linear_cross_entropy(X, W, y, z_loss=v),
    }
    for name, call in calls.items():
        jax.block_until_ready(call(X, y, 0.05))  # the first call may compile
        with CompileCounter() as counter:
            for seed in range(3):  # new values, same shapes and options: nothing compiles
                _, _, X2, y2 = make_problem(37, 11, 13, seed=seed, dtype=jnp.float32)
                jax.block_until_ready(call(X2, y2, 0.1 * (seed + 1)))
        assert counter.count == 0, f"{name} compiled {counter.count} programs for new values"


def test_a_jitted_training_step_traces_once():
    # chex's trace counter, as a JAX user would check it: a jitted step built on the public API
    # is traced once for a shape, whatever the values (and a second trace would raise).
    W, b, X, y = make_problem(37, 11, 13, seed=21, dtype=jnp.float32, bias=True)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, X, y, l2):
        value, grad = jsoftmax.value_and_grad(params, X, y, l2=l2)
        loss = jsoftmax.linear_cross_entropy(X, params.W, y, bias=params.b)
        return value + loss, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grad)

    params = jsoftmax.Params(W, b)
    for seed in range(3):
        _, _, X2, y2 = make_problem(37, 11, 13, seed=seed, dtype=jnp.float32)
        _, params = step(params, X2, y2, 0.01 * (seed + 1))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, jsoftmax.Params(W, b))
    with pytest.raises(AssertionError, match="traced > 1 times"):
        step(params, X[:10], y[:10], 0.01)  # a new shape is a second trace


def test_compile_counter_sees_a_new_shape():
    # The counter itself can fail: a shape never used before must compile.
    W, _, X, y = make_problem(41, 3, 7, seed=0, dtype=jnp.float32)
    with CompileCounter() as counter:
        jax.block_until_ready(jsoftmax.risk(W, X, y, l2=0.123))
    assert counter.count >= 1


def test_works_under_jit_vmap_and_grad(x64):
    W, b, X, y = make_problem(16, 4, 3, seed=20, bias=True)
    params = jsoftmax.Params(W, b)
    jitted = jax.jit(lambda p, X, y: jsoftmax.value_and_grad(p, X, y))
    v, g = jitted(params, X, y)
    ref_value, (gW, gb) = jax.value_and_grad(reference_risk, argnums=(0, 1))(W, b, X, y)
    np.testing.assert_allclose(v, ref_value, rtol=1e-12)
    assert_normwise_close(g.W, gW, 1e-12, "dR/dW under jit")
    assert_normwise_close(g.b, gb, 1e-12, "dR/db under jit")
    # vmap over a batch of weight matrices, values and gradients.
    Ws = jnp.stack([W, 2 * W, -W])
    batched = jax.vmap(lambda W: jsoftmax.value_and_grad(W, X, y))(Ws)
    for i, w in enumerate(Ws):
        ref_value, ref_grad = jax.value_and_grad(reference_risk)(w, None, X, y)
        np.testing.assert_allclose(batched[0][i], ref_value, rtol=1e-12)
        assert_normwise_close(batched[1][i], ref_grad, 1e-12, f"vmapped dR/dW {i}")
    # jax.grad through a jitted, vmapped mean of risks.
    got = jax.jit(jax.grad(lambda Ws: jnp.mean(jax.vmap(lambda W: jsoftmax.risk(W, X, y))(Ws))))(Ws)
    want = jax.grad(lambda Ws: jnp.mean(jnp.stack([reference_risk(w, None, X, y) for w in Ws])))(Ws)
    assert_normwise_close(got, want, 1e-12, "grad of vmapped risk")


def test_forward_mode_raises_the_documented_error(x64):
    W, _, X, y = make_problem(6, 3, 4, seed=21)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff \\(jvp\\) to a custom_vjp"):
        jax.jvp(lambda W: jsoftmax.risk(W, X, y), (W,), (W,))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: jsoftmax.linear_cross_entropy(x, W, y), (X,), (X,))


@pytest.mark.parametrize("chunk_rows", [1, 7, 16, 64])
@pytest.mark.parametrize("soft", [False, True])
def test_row_chunks_with_remainder_match_reference(x64, chunk_rows, soft):
    # 45 rows: full chunks plus a remainder for every chunk size but 1.
    W, b, X, y = make_problem(45, 6, 5, seed=21, bias=True, soft=soft)
    s = jnp.linspace(0.2, 1.5, 45)
    if not soft:
        y = y.at[::5].set(-100)
    opts = dict(sample_weight=s, l2=0.05, label_smoothing=0.1)
    params = jsoftmax.Params(W, b)
    value, grad = jsoftmax.value_and_grad(params, X, y, chunk_rows=chunk_rows, **opts)
    ref_value, ref = jax.value_and_grad(reference_risk, argnums=(0, 1))(W, b, X, y, **opts)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert_normwise_close(grad.W, ref[0], 1e-12, "W")
    assert_normwise_close(grad.b, ref[1], 1e-12, "b")
    # jax.grad through the custom VJP, X and the weights included, by chunks too.
    got = jax.grad(
        lambda p, X, s: jsoftmax.risk(p, X, y, chunk_rows=chunk_rows, **dict(opts, sample_weight=s)),
        argnums=(1, 2),
    )(params, X, s)
    want = jax.grad(
        lambda X, s: reference_risk(W, b, X, y, **dict(opts, sample_weight=s)), argnums=(0, 1)
    )(X, s)
    assert_normwise_close(got[0], want[0], 1e-12, "X")
    assert_normwise_close(got[1], want[1], 1e-12, "sample_weight")


def test_chunk_rows_must_be_positive(x64):
    W, _, X, y = make_problem(5, 3, 3)
    with pytest.raises(ValueError, match=r"`chunk_rows` must be a positive int or None; got 0"):
        jsoftmax.risk(W, X, y, chunk_rows=0)
