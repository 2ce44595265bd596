"""Bad input gets a clear ValueError/TypeError naming the argument, eagerly and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax

from ..helpers import make_problem


@pytest.fixture
def problem():
    W, b, X, y = make_problem(6, 3, 4, seed=0, dtype=jnp.float32, bias=True)
    return jsoftmax.Params(W, b), X, y


def test_X_not_2d(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`X` must be 2-D .* got shape \(18,\)"):
        jsoftmax.risk(params, X.ravel(), y)


def test_X_rows_differ_from_labels(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`labels` must have shape \(n_samples,\) = \(6,\) .* got \(5,\)"):
        jsoftmax.risk(params, X, y[:5])


def test_W_rows_differ_from_features(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`params.W` must have shape .* \(3, K\) .* got \(4, 4\)"):
        jsoftmax.risk(jsoftmax.Params(jnp.zeros((4, 4)), None), X, y)


def test_bias_length_differs_from_classes(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`params.b` must have shape \(n_classes,\) = \(4,\) .* got \(3,\)"):
        jsoftmax.risk(jsoftmax.Params(params.W, jnp.zeros(3)), X, y)


def test_labels_of_wrong_rank(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"integer `labels` must have shape \(n_samples,\)"):
        jsoftmax.risk(params, X, y[:, None])
    with pytest.raises(ValueError, match=r"probability `labels` must have shape .* \(6, 4\)"):
        jsoftmax.risk(params, X, jnp.ones((6, 3)) / 3)


def test_float_array_used_as_class_ids(problem):
    params, X, y = problem
    with pytest.raises(TypeError, match=r"1-D float array .* class ids must be integers"):
        jsoftmax.risk(params, X, y.astype(jnp.float32))


def test_integer_labels_out_of_range(problem):
    params, X, y = problem
    for bad in (4, -1, 99):
        with pytest.raises(ValueError, match=rf"class ids in \[0, 4\) .* row 2 has label {bad}"):
            jsoftmax.value_and_grad(params, X, y.at[2].set(bad))


@pytest.mark.usefixtures("traced_checks")
def test_integer_labels_out_of_range_inside_jit_raise_at_run_time(problem):
    params, X, y = problem
    step = jax.jit(jsoftmax.value_and_grad)
    step(params, X, y)  # valid labels run
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"class ids in \[0, 4\)"):
        jax.block_until_ready(step(params, X, y.at[3].set(4)))


def test_closed_over_labels_inside_jit_raise_eagerly(problem):
    params, X, y = problem
    bad = y.at[0].set(10)
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        jax.jit(jax.grad(lambda p: jsoftmax.risk(p, X, bad)))(params)


def test_soft_labels_with_negative_entries(problem):
    params, X, _ = problem
    Y = jnp.full((6, 4), 0.25).at[1].set(jnp.array([0.75, 0.5, -0.25, 0.0]))
    with pytest.raises(ValueError, match=r"non-negative entries summing to 1; 1 row\(s\) .* row 1"):
        jsoftmax.risk(params, X, Y)


def test_soft_labels_not_summing_to_one(problem):
    params, X, _ = problem
    Y = jnp.full((6, 4), 0.25).at[4].set(0.5)
    with pytest.raises(ValueError, match=r"row 4, which sums to 2"):
        jsoftmax.risk_grad(params, X, Y)


def test_unnormalised_soft_rows_get_the_general_gradient_when_unchecked():
    # With the checks off (e.g. inside a loop over pre-validated data) the kernel still returns
    # the true gradient of -sum y log softmax(z), i.e. p * sum(y) - y, never p - y.
    W, _, X, _ = make_problem(5, 3, 4, seed=1, dtype=jnp.float32)
    Y = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (5, 4)), jnp.float32)

    def general(W):
        return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(X @ W), axis=1))

    got = jsoftmax.risk_grad(W, X, Y, check_values=False)
    np.testing.assert_allclose(got, jax.grad(general)(W), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_X(problem, bad):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`X` contains NaN or inf"):
        jsoftmax.risk(params, X.at[2, 1].set(bad), y)


def test_no_samples():
    with pytest.raises(ValueError, match=r"`X` has no rows"):
        jsoftmax.risk(jnp.zeros((3, 2)), jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


def test_fewer_than_two_classes():
    with pytest.raises(ValueError, match=r"at least 2 classes .* got shape \(3, 1\)"):
        jsoftmax.risk(jnp.zeros((3, 1)), jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32))


def test_every_row_ignored(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"every label equals ignore_index=-100"):
        jsoftmax.risk(params, X, jnp.full_like(y, -100))


def test_sample_weight_shape_and_values(problem):
    params, X, y = problem
    with pytest.raises(ValueError, match=r"`sample_weight` must have shape \(n_samples,\) = \(6,\)"):
        jsoftmax.risk(params, X, y, sample_weight=jnp.ones(5))
    with pytest.raises(ValueError, match=r"`sample_weight` must be finite and non-negative"):
        jsoftmax.risk(params, X, y, sample_weight=jnp.ones(6).at[0].set(-1))
    with pytest.raises(ValueError, match=r"weight 0"):
        jsoftmax.risk(params, X, y, sample_weight=jnp.zeros(6))


def test_dtypes(problem):
    params, X, y = problem
    with pytest.raises(TypeError, match=r"`X` must have a floating dtype .* got int32"):
        jsoftmax.risk(params, X.astype(jnp.int32), y)
    with pytest.raises(TypeError, match=r"`params.W` dtype must match `X` dtype float32; got bfloat16"):
        jsoftmax.risk(jsoftmax.Params(params.W.astype(jnp.bfloat16)), X, y)
    with pytest.raises(TypeError, match=r"`labels` must be integer class ids or float probability rows; got bool"):
        jsoftmax.risk(params, X, y > 1)
    with pytest.raises(TypeError, match=r"`params` must be a jsoftmax.Params"):
        jsoftmax.risk((params.W, params.b), X, y)


@pytest.mark.parametrize(
    ("option", "value", "pattern"),
    [
        ("l2", -0.1, r"`l2` must lie in \[0.0, inf\); got -0.1"),
        ("label_smoothing", 1.0, r"`label_smoothing` must lie in \[0.0, 1.0\); got 1.0"),
        ("label_smoothing", float("nan"), r"`label_smoothing` must lie in"),
    ],
)
def test_option_ranges(problem, option, value, pattern):
    params, X, y = problem
    with pytest.raises(ValueError, match=pattern):
        jsoftmax.risk(params, X, y, **{option: value})


def test_ignore_index_must_be_int(problem):
    params, X, y = problem
    with pytest.raises(TypeError, match=r"`ignore_index` must be a Python int"):
        jsoftmax.risk(params, X, y, ignore_index=1.5)


def test_predict_validates_features(problem):
    params, X, _ = problem
    with pytest.raises(ValueError, match=r"`params.W` must have shape .* \(2, K\)"):
        jsoftmax.predict(params, X[:, :2])


def _bad_value_cases(params, X, y):
    """(arguments of jsoftmax.risk, the message it must raise) for every value check."""
    soft = jnp.full((6, 4), 0.25)
    return [
        ((params, X.at[2, 1].set(np.nan), y), {}, r"`X` contains NaN or inf"),
        ((params, X.at[0, 0].set(-np.inf), y), {}, r"`X` contains NaN or inf"),
        ((params, X, y.at[3].set(7)), {}, r"class ids in \[0, 4\) .* 1 are not \(first: row 3 has label 7\)"),
        ((params, X, soft.at[4].set(0.5)), {}, r"row 4, which sums to 2"),
        ((params, X, soft.at[1].set(jnp.array([0.75, 0.5, -0.25, 0.0]))), {}, r"non-negative entries .* row 1"),
        ((params, X, y), dict(sample_weight=jnp.ones(6).at[0].set(-1)), r"`sample_weight` must be finite"),
        ((params, X, y), dict(sample_weight=jnp.zeros(6)), r"weight 0"),
        ((params, X, jnp.full_like(y, -100)), {}, r"every label equals ignore_index=-100"),
        ((params._replace(b=params.b.at[1].set(np.inf)), X, y), {}, r"`params` contain NaN or inf"),
    ]


@pytest.mark.parametrize("where", ["host", "program"])
def test_value_checks_agree_on_the_host_and_in_the_program(problem, monkeypatch, where):
    """Small CPU data is checked by NumPy where it lies; larger (or accelerator) data by a jitted
    summary. Both raise the same errors, and valid data passes both."""
    from jsoftmax import _validate

    calls = []
    jitted = _validate._value_summary
    monkeypatch.setattr(_validate, "_value_summary", lambda *a, **k: calls.append(1) or jitted(*a, **k))
    if where == "program":
        monkeypatch.setattr(_validate, "HOST_CHECK_BYTES", -1)
    params, X, y = problem
    for args, kwargs, pattern in _bad_value_cases(params, X, y):
        with pytest.raises(ValueError, match=pattern):
            jsoftmax.risk(*args, **kwargs)
    calls.clear()
    value = jsoftmax.risk(params, np.asarray(X), np.asarray(y))
    assert np.isfinite(float(value))
    assert len(calls) == (where == "program")
