"""The LM head's parity options: the logit soft-cap, predictions and accuracy from the fused pass,
the recompute backward and a 16-bit dW accumulator — each against the reference at three
precisions, and each option's bad values."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax import _engine
from jsoftmax._compat import enable_x64

from ..helpers import assert_normwise_close, rtol
from .test_linear_ce import CHUNKINGS, loss_and_grads, problem

CAPPED = [dict(softcap=1.5), dict(softcap=2.0, label_smoothing=0.1, z_loss=1e-2)]


@pytest.mark.parametrize(("reduction", "options", "chunking"),
                         list(itertools.product(["mean", "none"], CAPPED, CHUNKINGS)))
def test_softcap_matches_reference_float64(x64, reduction, options, chunking):
    x, w, b, y = problem(37, 6, 23, seed=5)
    w = 4 * w  # scores of several units: the cap bends them
    got = loss_and_grads(x, w, b, y, reduction, implementation="chunked", **options, **chunking)
    want = loss_and_grads(x, w, b, y, reduction, implementation="reference", **options)
    uncapped = loss_and_grads(x, w, b, y, reduction, implementation="reference",
                              **{k: v for k, v in options.items() if k != "softcap"})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    assert abs(float(want[0]) - float(uncapped[0])) > 1e-3 * abs(float(uncapped[0]))  # it matters
    for g, r, name in zip(got[1], want[1], "xwb"):
        assert_normwise_close(g, r, 1e-12, name)


def test_softcap_soft_labels_float64(x64):
    x, w, b, y = problem(29, 5, 11, seed=6, soft=True)
    got = loss_and_grads(x, 3 * w, b, y, "mean", implementation="chunked", softcap=1.0, chunk_size=8,
                         class_chunk_size=4)
    want = loss_and_grads(x, 3 * w, b, y, "mean", implementation="reference", softcap=1.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, r in zip(got[1], want[1]):
        assert_normwise_close(g, r, 1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softcap_low_precision_against_float64(dtype):
    x, w, b, y = problem(200, 64, 300, seed=7, dtype=dtype)
    w = (4 * w).astype(dtype)
    value, grads = loss_and_grads(x, w, b, y, "mean", softcap=3.0, chunk_size=48)
    with enable_x64():
        c = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        ref_value, ref = loss_and_grads(c(x), c(w), c(b), y, "mean", softcap=3.0, implementation="reference")
    np.testing.assert_allclose(float(value), float(ref_value), rtol=rtol(dtype))
    for g, r, name in zip(grads, ref, "xwb"):
        assert_normwise_close(g, r, rtol(dtype), name)


def test_softcap_at_huge_scores_saturates_without_nan(x64):
    x, w, b, y = problem(16, 4, 9, seed=8, ignore=False)
    value, grads = loss_and_grads(1e6 * x, w, b, y, "mean", softcap=5.0, chunk_size=4)
    assert np.isfinite(float(value)) and float(value) <= 10 + np.log(9)  # |s| <= c bounds the loss
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


@pytest.mark.parametrize("options", [dict(), dict(bias=True, weights=True, ignore=True),
                                     dict(soft=True, bias=True)])
def test_check_gradient_verifies_the_capped_loss(x64, options):
    from jsoftmax._verify import random_problem

    params, X, y, sw = random_problem(64, 6, 7, scale=3.0, **options)
    report = jsoftmax.check_gradient(params, X, y, sample_weight=sw, softcap=2.5, l2=0.1,
                                     label_smoothing=0.05)
    assert report.passed, str(report)
    assert report.problem["softcap"] == 2.5
    steps = {row.step for row in report.rows}
    assert steps == {"1", "2", "3", "4", ""}


def test_check_gradient_with_softcap_catches_an_uncapped_gradient(x64, monkeypatch):
    # The check must fail if the engine forgot the cap's factor 1 - (s/c)^2.
    from jsoftmax import _rows
    from jsoftmax._verify import random_problem

    monkeypatch.setattr(_rows, "uncap_gradient", lambda dz, capped, cap: dz)
    params, X, y, _ = random_problem(32, 5, 6, scale=3.0, seed=3)
    report = jsoftmax.check_gradient(params, X, y, softcap=1.0)
    failed = {(row.step, row.name) for row in report.rows if not row.passed}
    assert ("2", "∂ℓ/∂z") in failed and ("3", "∂ℓₙ/∂W") in failed and ("4", "dR/dW") in failed


# --- predictions and accuracy from the same pass ---------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_predictions_are_the_argmax_of_the_scores(x64, chunking, softcap):
    x, w, b, y = problem(37, 6, 23, seed=9)
    loss, predicted, accuracy = jsoftmax.linear_cross_entropy(
        x, w, y, bias=b, softcap=softcap, return_predictions=True, return_accuracy=True, **chunking)
    expected = np.argmax(np.asarray(x @ w + b), axis=1)
    np.testing.assert_array_equal(np.asarray(predicted), expected)
    assert predicted.dtype == jnp.int32
    counted = np.asarray(y) != -100
    assert float(accuracy) == pytest.approx(np.mean(expected[counted] == np.asarray(y)[counted]))
    np.testing.assert_allclose(loss, jsoftmax.linear_cross_entropy(x, w, y, bias=b, softcap=softcap), rtol=1e-14)


def test_predictions_take_the_first_of_tied_classes_across_class_blocks():
    x = jnp.ones((3, 1))
    w = jnp.asarray([[0.0, 2.0, 1.0, 2.0, 2.0, 0.0, 2.0]])  # ties at classes 1, 3, 4, 6
    y = jnp.asarray([1, 3, 6])
    for chunking in (dict(), dict(chunk_size=2, class_chunk_size=2), dict(class_chunk_size=3)):
        _, predicted = jsoftmax.linear_cross_entropy(x, w, y, return_predictions=True, **chunking)
        np.testing.assert_array_equal(np.asarray(predicted), [1, 1, 1])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_accuracy_reduces_like_the_loss(reduction):
    x = jnp.eye(4)
    w = jnp.eye(4)  # row n predicts class n
    y = jnp.asarray([0, 2, -100, 3])  # rows 0 and 3 right, row 1 wrong, row 2 ignored
    lse, predicted, accuracy = jsoftmax.linear_cross_entropy(
        x, w, y, reduction=reduction, return_lse=True, return_predictions=True, return_accuracy=True)[1:]
    np.testing.assert_array_equal(np.asarray(predicted), [0, 1, 2, 3])
    np.testing.assert_allclose(lse, jax.nn.logsumexp(jnp.eye(4), axis=1), rtol=1e-6)
    expected = {"mean": 2 / 3, "sum": 2.0, "none": [1.0, 0.0, 0.0, 1.0]}[reduction]
    np.testing.assert_allclose(accuracy, expected, rtol=1e-6)


def test_accuracy_of_probability_rows_is_against_their_argmax():
    x, w, b, y = problem(20, 4, 6, seed=10, soft=True, dtype=jnp.float32)
    _, accuracy = jsoftmax.linear_cross_entropy(x, w, y, bias=b, return_accuracy=True)
    expected = np.mean(np.argmax(np.asarray(x @ w + b), 1) == np.argmax(np.asarray(y), 1))
    assert float(accuracy) == pytest.approx(expected)


def test_gradients_with_predictions_under_jit_are_the_plain_gradients(x64):
    x, w, b, y = problem(30, 5, 12, seed=11)

    def with_accuracy(w):
        loss, accuracy = jsoftmax.linear_cross_entropy(x, w, y, chunk_size=8, return_accuracy=True)
        return loss, accuracy

    (value, accuracy), grad = jax.jit(jax.value_and_grad(with_accuracy, has_aux=True))(w)
    plain_value, plain_grad = jax.value_and_grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y))(w)
    np.testing.assert_allclose(value, plain_value, rtol=1e-14)
    assert_normwise_close(grad, plain_grad, 1e-12)
    assert 0.0 <= float(accuracy) <= 1.0


def test_reference_implementation_gives_the_same_predictions():
    x, w, b, y = problem(25, 5, 9, seed=12, dtype=jnp.float32)
    fused = jsoftmax.linear_cross_entropy(x, w, y, bias=b, return_predictions=True, return_accuracy=True)
    plain = jsoftmax.linear_cross_entropy(x, w, y, bias=b, return_predictions=True, return_accuracy=True,
                                          implementation="reference")
    np.testing.assert_array_equal(np.asarray(fused[1]), np.asarray(plain[1]))
    assert float(fused[2]) == float(plain[2])


# --- the backward forms and the dW accumulator -------------------------------------------------


@pytest.mark.parametrize(("reduction", "chunking"), list(itertools.product(["mean", "sum"], CHUNKINGS)))
def test_recompute_backward_matches_the_fused_one(x64, reduction, chunking):
    x, w, b, y = problem(37, 6, 23, seed=13)
    weights = jnp.linspace(0.5, 2.0, 37)

    def f(x, w, b, sw, backward):
        from jsoftmax import _api

        problem_, spec, plan = _api.prepare(jsoftmax.Params(w, b), x, y, sample_weight=sw,
                                            reduction=reduction, backward=backward, z_loss=1e-2,
                                            label_smoothing=0.1, **{"chunk_rows": chunking.get("chunk_size"),
                                                                    "class_chunk": chunking.get("class_chunk_size")})
        return _api.loss(w, b, x, y, sw, 0.1, 1e-2, spec, plan)

    grads = {bw: jax.value_and_grad(f, argnums=(0, 1, 2, 3))(x, w, b, weights, bw)
             for bw in ("fused", "recompute")}
    np.testing.assert_allclose(grads["recompute"][0], grads["fused"][0], rtol=1e-14)
    for g, r, name in zip(grads["recompute"][1], grads["fused"][1], ["x", "w", "b", "sample_weight"]):
        assert_normwise_close(g, r, 1e-12, name)


def test_recompute_backward_in_the_public_op(x64):
    x, w, b, y = problem(37, 6, 23, seed=14)
    got = loss_and_grads(x, w, b, y, "mean", backward="recompute", softcap=3.0, chunk_size=8)
    want = loss_and_grads(x, w, b, y, "mean", implementation="reference", softcap=3.0)
    for g, r in zip(got[1], want[1]):
        assert_normwise_close(g, r, 1e-12)


def test_weight_grad_accumulation_rule(monkeypatch):
    assert _engine.weight_grad_dtype(jnp.float32, 4096, 128256) is None  # no choice for 32 bits
    assert _engine.weight_grad_dtype(jnp.bfloat16, 64, 100) is None  # small: float32
    assert _engine.weight_grad_dtype(jnp.bfloat16, 4096, 128256) == "bfloat16"  # 2 GiB > 1 GiB
    assert _engine.weight_grad_dtype(jnp.bfloat16, 4096, 128256, "float32") is None
    assert _engine.weight_grad_dtype(jnp.float16, 8, 8, "input") == "float16"
    assert _engine.FLOAT32_WEIGHT_GRAD_BYTES == _engine.RULES["gpu"]["float32_weight_grad_bytes"]


@pytest.mark.parametrize("chunking", [dict(chunk_size=48), dict(chunk_size=48, class_chunk_size=100)])
def test_bfloat16_weight_grad_accumulator_stays_within_bfloat16_rounding(chunking):
    x, w, b, y = problem(400, 64, 300, seed=15, dtype=jnp.bfloat16)
    grads = {acc: loss_and_grads(x, w, b, y, "mean", weight_grad_accumulation=acc, **chunking)[1]
             for acc in ("float32", "input")}
    with enable_x64():
        c = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        ref = loss_and_grads(c(x), c(w), c(b), y, "mean", implementation="reference")[1]
    assert grads["input"][1].dtype == jnp.bfloat16
    assert_normwise_close(grads["input"][1], ref[1], rtol(jnp.bfloat16), "w, bf16 accumulator")
    assert_normwise_close(grads["float32"][1], ref[1], rtol(jnp.bfloat16), "w, f32 accumulator")
    # The accumulator changed the program: the bf16 one rounds once per chunk.
    assert not np.array_equal(np.asarray(grads["input"][1]), np.asarray(grads["float32"][1]))


def test_bfloat16_accumulator_halves_the_scratch():
    x, w, b, y = problem(512, 64, 2048, seed=16, dtype=jnp.bfloat16, ignore=False)

    def temp(acc):
        f = jax.jit(jax.grad(lambda w: jsoftmax.linear_cross_entropy(
            x, w, y, chunk_size=128, weight_grad_accumulation=acc, check_values=False)))
        return f.lower(w).compile().memory_analysis().temp_size_in_bytes

    f32_accumulator = 64 * 2048 * 4
    assert temp("float32") - temp("input") >= f32_accumulator // 2


# --- bad values of each option -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(softcap=0.0), ValueError, r"`softcap` must be a finite number > 0 or None; got 0.0"),
        (dict(softcap=-3), ValueError, r"`softcap` must be a finite number > 0 or None; got -3.0"),
        (dict(softcap=float("inf")), ValueError, r"`softcap` must be a finite number > 0"),
        (dict(softcap=float("nan")), ValueError, r"`softcap` must be a finite number > 0"),
        (dict(softcap="30"), TypeError, r"`softcap` must be a positive real number or None; got '30'"),
        (dict(softcap=True), TypeError, r"`softcap` must be a positive real number or None; got True"),
        (dict(softcap=np.ones(2)), TypeError, r"`softcap` must be a positive real number"),
        (dict(softcap=1 + 2j), TypeError, r"`softcap` must be a positive real number"),
        (dict(backward="twice"), ValueError, r"`backward` must be one of 'auto', 'fused', 'recompute'; got 'twice'"),
        (dict(weight_grad_accumulation="bf16"), ValueError,
         r"`weight_grad_accumulation` must be one of 'auto', 'float32', 'input'; got 'bf16'"),
        (dict(return_predictions=1), TypeError, r"`return_predictions` must be True or False; got 1"),
        (dict(return_accuracy="yes"), TypeError, r"`return_accuracy` must be True or False"),
        (dict(return_lse=None), TypeError, r"`return_lse` must be True or False; got None"),
    ],
)
def test_bad_head_options(kwargs, error, pattern):
    x, w, _, y = problem(6, 3, 5, dtype=jnp.float32, ignore=False)
    with pytest.raises(error, match=pattern):
        jsoftmax.linear_cross_entropy(x, w, y, **kwargs)


def test_traced_softcap_is_refused():
    x, w, _, y = problem(6, 3, 5, dtype=jnp.float32, ignore=False)
    with pytest.raises(TypeError, match=r"`softcap` must be a concrete number \(it is static\)"):
        jax.jit(lambda c: jsoftmax.linear_cross_entropy(x, w, y, softcap=c))(3.0)


def test_differentiating_the_predictions_or_lse_is_refused():
    x, w, _, y = problem(6, 3, 5, dtype=jnp.float32, ignore=False)

    def through_lse(w):
        loss, lse, _ = jsoftmax.linear_cross_entropy(x, w, y, return_lse=True, return_predictions=True)
        return loss + jnp.sum(lse)

    with pytest.raises(TypeError, match="auxiliary output and is not differentiated"):
        jax.grad(through_lse)(w)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_low_precision_predictions_match_the_reference(dtype):
    x, w, b, y = problem(200, 64, 300, seed=17, dtype=dtype)
    kwargs = dict(bias=b, return_predictions=True, return_accuracy=True, softcap=5.0)
    fused = jsoftmax.linear_cross_entropy(x, w, y, chunk_size=48, class_chunk_size=100, **kwargs)
    plain = jsoftmax.linear_cross_entropy(x, w, y, implementation="reference", **kwargs)
    # Both take the arg-max of the same float32 scores of the same 16-bit inputs.
    np.testing.assert_array_equal(np.asarray(fused[1]), np.asarray(plain[1]))
    assert float(fused[2]) == float(plain[2])


def test_backward_rule_is_read_from_the_rules_file():
    assert _engine.recompute_backward("recompute") and not _engine.recompute_backward("fused")
    for platform in ("cpu", "gpu"):
        rule = _engine.RULES["cpu" if platform == "cpu" else "gpu"]["backward"]
        assert _engine.recompute_backward("auto", platform) == (rule == "recompute")
