"""linear_cross_entropy: chunked vs the reference at three precisions, inside models, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax._compat import enable_x64
from jsoftmax._engine import choose_chunks
from jsoftmax._verify import random_problem

from ..helpers import assert_normwise_close, rtol


def problem(n, d, k, *, seed=0, dtype=jnp.float64, soft=False, ignore=True):
    """(x, w, bias, labels) from the shared generator; every third row ignored by default."""
    params, x, y, _ = random_problem(n, d, k, dtype=dtype, seed=seed, soft=soft, bias=True,
                                     ignore=ignore and not soft)
    return x, params.W, params.b, y


def loss_and_grads(x, w, b, y, reduction, **kwargs):
    n = x.shape[0]
    weights = jnp.arange(1.0, n + 1.0, dtype=jnp.float32)  # a non-trivial per-row cotangent

    def f(x, w, b):
        out = jsoftmax.linear_cross_entropy(x, w, y, bias=b, reduction=reduction, **kwargs)
        return jnp.sum(out * weights) if reduction == "none" else out

    return jax.value_and_grad(f, argnums=(0, 1, 2))(x, w, b)


CHUNKINGS = [dict(chunk_size=8), dict(chunk_size=8, class_chunk_size=5),
             dict(chunk_size=64, class_chunk_size=7), dict()]
OPTIONS = [dict(), dict(label_smoothing=0.15), dict(z_loss=1e-2), dict(label_smoothing=0.2, z_loss=0.1)]


@pytest.mark.parametrize(("reduction", "options", "chunking"),
                         list(itertools.product(["mean", "sum", "none"], OPTIONS, CHUNKINGS)))
def test_chunked_matches_reference_float64(x64, reduction, options, chunking):
    _assert_chunked_matches_reference(reduction, options, chunking)


def _assert_chunked_matches_reference(reduction, options, chunking):
    x, w, b, y = problem(37, 6, 23, seed=1)
    got = loss_and_grads(x, w, b, y, reduction, implementation="chunked", **options, **chunking)
    want = loss_and_grads(x, w, b, y, reduction, implementation="reference", **options)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, r, name in zip(got[1], want[1], "xwb"):
        assert_normwise_close(g, r, 1e-12, name)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_soft_labels_float64(x64, chunking):
    x, w, b, y = problem(29, 5, 11, seed=2, soft=True)
    got = loss_and_grads(x, w, b, y, "mean", implementation="chunked", label_smoothing=0.1, **chunking)
    want = loss_and_grads(x, w, b, y, "mean", implementation="reference", label_smoothing=0.1)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, r in zip(got[1], want[1]):
        assert_normwise_close(g, r, 1e-12)


def test_reference_is_the_plain_definition(x64):
    x, w, b, y = problem(20, 4, 7, seed=3)
    z = x @ w + b
    keep = np.asarray(y) != -100
    rows = -jnp.take_along_axis(jax.nn.log_softmax(z), jnp.where(keep, y, 0)[:, None], 1)[:, 0]
    expected = jnp.sum(jnp.where(keep, rows, 0)) / keep.sum()
    got = jsoftmax.linear_cross_entropy(x, w, y, bias=b, implementation="reference")
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    per_row = jsoftmax.linear_cross_entropy(x, w, y, bias=b, reduction="none")
    np.testing.assert_allclose(per_row, jnp.where(keep, rows, 0), rtol=1e-12, atol=1e-15)
    assert float(jnp.max(jnp.abs(per_row[~keep]))) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("chunking", [dict(chunk_size=48), dict(chunk_size=48, class_chunk_size=100)])
def test_low_precision_against_float64(dtype, chunking):
    x, w, b, y = problem(200, 64, 300, seed=4, dtype=dtype)
    value, grads = loss_and_grads(x, w, b, y, "mean", z_loss=1e-3, **chunking)
    assert value.dtype == jnp.float32 and [g.dtype for g in grads] == [dtype] * 3
    with enable_x64():
        c = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        ref_value, ref = loss_and_grads(c(x), c(w), c(b), y, "mean", z_loss=1e-3, implementation="reference")
    np.testing.assert_allclose(float(value), float(ref_value), rtol=rtol(dtype))
    for g, r, name in zip(grads, ref, "xwb"):
        assert_normwise_close(g, r, rtol(dtype), name)


def test_two_layer_model_head(x64):
    # h = tanh(x A + c); loss = linear_cross_entropy(h, W, y, bias=b). Every parameter's gradient
    # through the op must equal jax.grad of the plain composite.
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((40, 8)))
    y = jnp.asarray(rng.integers(0, 13, 40))
    params = {"A": jnp.asarray(rng.standard_normal((8, 6)) / 3), "c": jnp.asarray(rng.standard_normal(6)),
              "W": jnp.asarray(rng.standard_normal((6, 13)) / 3), "b": jnp.asarray(rng.standard_normal(13))}

    def model(p, implementation):
        h = jnp.tanh(x @ p["A"] + p["c"])
        if implementation == "plain":
            z = h @ p["W"] + p["b"]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1))
        return jsoftmax.linear_cross_entropy(h, p["W"], y, bias=p["b"], chunk_size=16, class_chunk_size=4)

    got = jax.jit(jax.grad(model), static_argnums=1)(params, "op")
    want = jax.grad(model)(params, "plain")
    for name in params:
        assert_normwise_close(got[name], want[name], 1e-12, name)


def test_vmap_jit_and_return_lse(x64):
    x, w, b, y = problem(16, 4, 9, seed=6, ignore=False)
    batch = jnp.stack([x, 2 * x, -x])
    fn = jax.jit(jax.vmap(lambda x: jsoftmax.linear_cross_entropy(x, w, y, chunk_size=4)))
    expected = jnp.stack([jsoftmax.linear_cross_entropy(xi, w, y, implementation="reference") for xi in batch])
    np.testing.assert_allclose(fn(batch), expected, rtol=1e-12)
    grads = jax.vmap(jax.grad(lambda x: jsoftmax.linear_cross_entropy(x, w, y, chunk_size=4)))(batch)
    ref = jax.vmap(jax.grad(lambda x: jsoftmax.linear_cross_entropy(x, w, y, implementation="reference")))(batch)
    assert_normwise_close(grads, ref, 1e-12)
    loss, lse = jsoftmax.linear_cross_entropy(x, w, y, bias=b, return_lse=True, chunk_size=4, class_chunk_size=2)
    np.testing.assert_allclose(lse, jax.nn.logsumexp(x @ w + b, axis=1), rtol=1e-13)
    # The loss of a (loss, lse) call is still differentiable; the lse itself is not.
    g = jax.grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y, return_lse=True)[0])(w)
    assert_normwise_close(g, jax.grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y))(w), 1e-13)
    with pytest.raises(TypeError, match="auxiliary output"):
        jax.grad(lambda w: jnp.sum(jsoftmax.linear_cross_entropy(x, w, y, return_lse=True)[1]))(w)


def test_chunked_uses_less_scratch_than_the_materialised_logits():
    # memory_analysis() is exact and deterministic: a property of the compiled program.
    x, w, b, y = problem(4096, 64, 4000, dtype=jnp.float32, ignore=False)

    def temp(implementation, **kwargs):
        f = jax.jit(jax.value_and_grad(
            lambda x, w: jsoftmax.linear_cross_entropy(x, w, y, implementation=implementation,
                                                       check_values=False, **kwargs), argnums=(0, 1)))
        return f.lower(x, w).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4096 * 4000 * 4
    chunked, reference = temp("chunked", chunk_size=256), temp("reference")
    assert reference >= logits_bytes
    assert chunked <= reference / 4, (chunked, reference)


def test_chunk_rule():
    assert choose_chunks(8192, 1000) == (1024, None)
    assert choose_chunks(4096, 32000) == (1024, None)
    assert choose_chunks(16384, 128256) == (256, None)
    assert choose_chunks(16384, 128256, platform="gpu") == (1024, None)
    assert choose_chunks(8192, 256000, platform="gpu") == (1024, None)
    rows, classes = choose_chunks(4096, 1_000_000)
    assert rows == 256 and classes is not None and rows * classes * 4 <= 128 * 2**20
    assert choose_chunks(100, 1000) == (100, None)
    assert choose_chunks(8192, 1000, budget_bytes=2**20)[0] * 1000 * 4 <= 2**20


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(reduction="avg"), ValueError, r"`reduction` must be one of 'mean', 'sum', 'none'; got 'avg'"),
        (dict(implementation="triton"), ValueError, r"`implementation` must be one of 'auto', 'chunked', 'reference'"),
        (dict(chunk_size=0), ValueError, r"`chunk_size` must be a positive int or None; got 0"),
        (dict(class_chunk_size=-4), ValueError, r"`class_chunk_size` must be a positive int or None; got -4"),
        (dict(chunk_size=2.5), TypeError, r"`chunk_size` must be a positive int or None"),
        (dict(z_loss=-1e-4), ValueError, r"`z_loss` must lie in \[0.0, inf\)"),
        (dict(label_smoothing=1.5), ValueError, r"`label_smoothing` must lie in \[0.0, 1.0\)"),
        (dict(bias=jnp.zeros(4)), ValueError, r"`bias` must have shape \(n_classes,\) = \(5,\) to match `w`"),
    ],
)
def test_bad_options(kwargs, error, pattern):
    x, w, _, y = problem(6, 3, 5, dtype=jnp.float32, ignore=False)
    with pytest.raises(error, match=pattern):
        jsoftmax.linear_cross_entropy(x, w, y, **kwargs)


def test_bad_shapes_and_labels():
    x, w, _, y = problem(6, 3, 5, dtype=jnp.float32, ignore=False)
    with pytest.raises(ValueError, match=r"`w` must have shape .* \(3, K\) to match `x`; got \(4, 5\)"):
        jsoftmax.linear_cross_entropy(x, jnp.zeros((4, 5)), y)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(n_samples,\) = \(6,\)"):
        jsoftmax.linear_cross_entropy(x, w, y[:4])
    with pytest.raises(ValueError, match=r"class ids in \[0, 5\)"):
        jsoftmax.linear_cross_entropy(x, w, y.at[0].set(5))


@pytest.mark.slow
def test_lm_head_shape_float32_against_float64():
    # The benchmark's shape (4096, 1024, 32000): gradients within float32 rounding of float64.
    x, w, b, y = problem(4096, 1024, 32000, seed=7, dtype=jnp.float32)
    value, grads = loss_and_grads(x, w, b, y, "mean", label_smoothing=0.1)
    with enable_x64():
        c = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        ref_value, ref = loss_and_grads(c(x), c(w), c(b), y, "mean", label_smoothing=0.1, implementation="reference")
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
    for g, r, name in zip(grads, ref, "xwb"):
        assert_normwise_close(g, r, 1e-5, name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_soft_label_gradient_matches_reference(x64, reduction, chunking):
    # Probability rows get their true gradient -c (1 - eps) log softmax(z), chunk by chunk.
    x, w, b, y = problem(29, 5, 11, seed=8, soft=True)
    row_weights = jnp.arange(1.0, 30.0)

    def label_grad(implementation, **kwargs):
        def f(y):
            out = jsoftmax.linear_cross_entropy(x, w, y, bias=b, reduction=reduction, z_loss=0.01,
                                                label_smoothing=0.1, implementation=implementation,
                                                **kwargs)
            return jnp.sum(out * row_weights) if reduction == "none" else out

        return jax.grad(f)(y)

    assert_normwise_close(label_grad("chunked", **chunking), label_grad("reference"), 1e-12)


def test_soft_label_gradient_stays_within_the_chunk_bound():
    # The gradient with respect to probability rows is written chunk by chunk: besides its own
    # (N, K) output, the program keeps no N×K scores.
    x, w, _, y = problem(4096, 32, 2000, dtype=jnp.float32, soft=True)
    f = jax.jit(jax.grad(lambda y: jsoftmax.risk(w, x, y, chunk_rows=256, check_values=False)))
    temp = f.lower(y).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 4096 * 2000 * 4 / 4, temp


@pytest.fixture
def recomputed_exponentials(monkeypatch):
    """Blocks of every size take the second pass of exp, as a GPU's 1 GiB blocks do (CPU test
    blocks are small enough to keep theirs): traces made before are dropped, and after."""
    from jsoftmax import _engine

    jax.clear_caches()
    monkeypatch.setattr(_engine, "KEEP_EXPONENTIALS_BYTES", 0)
    yield
    jax.clear_caches()


def _exp_count(reduction="mean", **kwargs):
    x, w, b, y = problem(37, 6, 23, seed=1)
    jaxpr = jax.make_jaxpr(lambda x, w: loss_and_grads(x, w, b, y, reduction, **kwargs))(x, w)
    return str(jaxpr).count(" exp ")


def test_small_blocks_keep_their_exponentials(x64, monkeypatch):
    from jsoftmax import _engine

    kept = _exp_count(chunk_size=8)
    jax.clear_caches()
    monkeypatch.setattr(_engine, "KEEP_EXPONENTIALS_BYTES", 0)
    recomputed = _exp_count(chunk_size=8)
    jax.clear_caches()  # later tests trace with the shipped rule again
    assert 0 < kept < recomputed  # one pass of exp over a score block instead of two


@pytest.mark.parametrize(("reduction", "options", "chunking"),
                         list(itertools.product(["mean", "none"], OPTIONS + [dict(softcap=3.0)],
                                                [dict(chunk_size=8), dict()])))
def test_recomputed_exponentials_match_reference_float64(x64, recomputed_exponentials, reduction, options,
                                                          chunking):
    _assert_chunked_matches_reference(reduction, options, chunking)


def test_recomputed_exponentials_hvp_float64(x64, recomputed_exponentials):
    params, X, y, _ = random_problem(41, 5, 7, dtype=jnp.float64, seed=3, bias=True)
    V = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params)
    got = jsoftmax.hvp(params, X, y, V, l2=0.1, label_smoothing=0.1)

    def plain(p):
        z = X @ p.W + p.b
        t = 0.9 * jax.nn.one_hot(y, 7) + 0.1 / 7
        return -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z), -1)) + 0.05 * jnp.sum(p.W ** 2)

    want = jax.jvp(jax.grad(plain), (params,), (V,))[1]
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_normwise_close(g, r, 1e-12)
