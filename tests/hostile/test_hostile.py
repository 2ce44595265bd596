"""Hostile inputs: each case asserts the exact behaviour (the correct value, or an error type and
message). Grouped by the classes of failure of the hardening issue; more classes follow."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jsoftmax
from jsoftmax._compat import enable_x64
from jsoftmax.train import objective

from ..helpers import make_problem


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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("where", [(0, 0), (2500, 150), (4999, 299)])
def test_one_nan_in_a_large_x_is_refused(dtype, where):
    # XLA on a CPU dropped a lone NaN from max|X| of a 5,000 × 300 X (its vectorised max keeps
    # the other operand): X is large enough to be checked on the device, not by NumPy.
    X = np.random.default_rng(0).standard_normal((5000, 300)).astype(dtype)
    X[where] = np.nan
    with enable_x64(dtype == np.float64):
        for check in (lambda: jsoftmax.fit(jnp.zeros((300, 3), dtype), X, np.zeros(5000, int), solver="lbfgs"),
                      lambda: jsoftmax.risk(jnp.zeros((300, 3), dtype), jnp.asarray(X), jnp.zeros(5000, int)),
                      lambda: jsoftmax.predict(jnp.zeros((300, 3), dtype), jnp.asarray(X))):
            with pytest.raises(ValueError, match="`X` contains NaN or inf"):
                check()


def test_a_lone_nan_in_a_large_gradient_is_not_a_small_gradient():
    g = np.ones((3000, 1000), np.float32)
    g[0, 0] = np.nan
    assert np.isnan(jax.jit(objective.inf_norm)({"W": g}))


# --- Labels and weights whose meaning must not change with their dtype -------------------


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.uint16, jnp.int16, np.uint32])
def test_narrow_or_unsigned_label_dtypes_mean_the_same_classes(dtype):
    # uint8 labels compared with ignore_index=-100 used to read it as 156, dropping class 156;
    # a uint8 iota over 300 classes repeats after 255.
    k = 300 if np.iinfo(dtype).max > 255 or dtype == jnp.uint8 else 100
    W, b, X, _ = make_problem(6, 3, k, seed=1, dtype=jnp.float32, bias=True)
    ids = np.array([156, 2, 99, 7, 0, 1]) if k == 300 else np.array([56, 2, 99, 7, 0, 1])
    labels = np.asarray(ids, dtype) if dtype is np.uint32 else jnp.asarray(ids, dtype)
    want_v, want_g = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, jnp.asarray(ids, jnp.int32))
    got_v, got_g = jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, labels)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_g.W, want_g.W)
    got = jsoftmax.linear_cross_entropy(X, W, labels, bias=b, chunk_size=4, class_chunk_size=64)
    np.testing.assert_allclose(got, want_v, rtol=1e-6)


def test_label_ids_beyond_int32_are_refused_not_wrapped():
    W, _, X, _ = make_problem(4, 3, 5, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"`labels` must be class ids in \[0, 5\).*does not even fit int32"):
        jsoftmax.risk(W, X, np.array([0, 1, 2**32 - 100, 3], np.uint32))
    with pytest.raises(ValueError, match="`ignore_index` must fit in int32"):
        jsoftmax.risk(W, X, jnp.asarray([0, 1, 2, 3]), ignore_index=2**40)


@pytest.mark.parametrize("weight", [1e38, 3e38])
def test_weights_near_the_float32_limit_give_the_unweighted_risk(weight):
    # Equal weights mean the plain mean; Σw overflowed to inf and gave a risk of 0.
    W, b, X, y = make_problem(16, 4, 5, seed=2, dtype=jnp.float32, bias=True)
    params = jsoftmax.Params(W, b)
    want_v, want_g = jsoftmax.value_and_grad(params, X, y)
    got_v, got_g = jsoftmax.value_and_grad(params, X, y, sample_weight=jnp.full(16, weight, jnp.float32))
    np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
    np.testing.assert_allclose(got_g.W, want_g.W, rtol=1e-5, atol=1e-7)


def test_tiny_float64_weights_are_valid(x64):
    W, b, X, y = make_problem(16, 4, 5, seed=2, bias=True)
    params = jsoftmax.Params(W, b)
    want = jsoftmax.risk(params, X, y)
    np.testing.assert_allclose(jsoftmax.risk(params, X, y, sample_weight=jnp.full(16, 1e-50)), want, rtol=1e-14)
    with pytest.raises(ValueError, match="weight 0"):
        jsoftmax.risk(params, X, y, sample_weight=jnp.zeros(16))


# --- Constraints hold under jit too ---------------------------------------------------------


@pytest.mark.usefixtures("traced_checks")
@pytest.mark.parametrize(("option", "value"), [("l2", -5.0), ("label_smoothing", 1.5),
                                               ("label_smoothing", -0.1), ("l2", float("nan"))])
def test_traced_options_out_of_range_raise_at_run_time(option, value):
    W, _, X, y = make_problem(8, 3, 4, dtype=jnp.float32)
    step = jax.jit(lambda v: jsoftmax.risk(W, X, y, **{option: v}))
    jax.block_until_ready(step(0.1))  # in range: runs
    with pytest.raises(jax.errors.JaxRuntimeError, match=rf"`{option}` must lie in"):
        jax.block_until_ready(step(value))


@pytest.mark.usefixtures("traced_checks")
def test_traced_z_loss_out_of_range_raises_at_run_time():
    W, _, X, y = make_problem(8, 3, 4, dtype=jnp.float32)
    step = jax.jit(lambda v: jsoftmax.linear_cross_entropy(X, W, y, z_loss=v))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`z_loss` must lie in"):
        jax.block_until_ready(step(-1.0))


@pytest.mark.usefixtures("traced_checks")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_params_are_refused_eagerly_and_under_jit(bad):
    W, b, X, y = make_problem(8, 3, 4, dtype=jnp.float32, bias=True)
    with pytest.raises(ValueError, match=r"`params` contain NaN or inf"):
        jsoftmax.risk(jsoftmax.Params(W.at[1, 2].set(bad), b), X, y)
    with pytest.raises(ValueError, match=r"`w` or `bias` contain NaN or inf"):
        jsoftmax.linear_cross_entropy(X, W, y, bias=b.at[0].set(bad))
    grad = jax.jit(jax.grad(lambda W: jsoftmax.risk(W, X, y)))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`params` contain NaN or inf"):
        jax.block_until_ready(grad(W.at[0, 0].set(bad)))


@pytest.mark.parametrize(("option", "value", "error"), [
    ("l2", "0.1", TypeError), ("l2", [0.1], TypeError), ("label_smoothing", True, TypeError),
    ("ignore_index", 1.5, TypeError), ("ignore_index", "-100", TypeError),
    ("chunk_rows", 2.0, TypeError), ("chunk_rows", -3, ValueError)])
def test_options_of_the_wrong_type_name_the_option(option, value, error):
    W, _, X, y = make_problem(8, 3, 4, dtype=jnp.float32)
    with pytest.raises(error, match=f"`{option}`"):
        jsoftmax.risk(W, X, y, **{option: value})


# --- Stale state: checkpoints of another problem -------------------------------------------


def small_fit(tmp_path, X, y, l2=0.01, resume=False, folder="ckpt", **kwargs):
    start = jsoftmax.Params(jnp.zeros((X.shape[1], 3)), jnp.zeros(3))
    return jsoftmax.fit(start, X, y, optax.lbfgs(), l2=l2, max_iter=kwargs.pop("max_iter", 6),
                        tol=0.0, checkpoint_dir=str(tmp_path / folder), resume=resume, **kwargs)


@pytest.mark.parametrize("change", ["data", "labels", "l2", "weights", "smoothing"])
def test_resume_on_another_problem_is_refused(x64, tmp_path, change):
    W, b, X, y = make_problem(40, 4, 3, seed=5)
    small_fit(tmp_path, X, y)
    other = dict(X=X, y=y, l2=0.01)
    kwargs = {}
    if change == "data":
        other["X"] = X + 1e-3  # same shapes, other values
    elif change == "labels":
        other["y"] = jnp.roll(y, 1)
    elif change == "l2":
        other["l2"] = 0.02  # another C
    elif change == "weights":
        kwargs["sample_weight"] = jnp.linspace(0.5, 1.5, 40)
    else:
        kwargs["label_smoothing"] = 0.1
    with pytest.raises(ValueError, match="written for other data or options"):
        small_fit(tmp_path, other["X"], other["y"], l2=other["l2"], resume=True, max_iter=12, **kwargs)
    # The same problem resumes.
    assert small_fit(tmp_path, X, y, resume=True, max_iter=12).n_iter == 12


def test_fallback_to_an_older_checkpoint_does_not_read_error_words(x64, tmp_path):
    # The folder's name contains "different": the fallback used to match that word in the
    # error message and gave up instead of loading the older, intact checkpoint.
    W, b, X, y = make_problem(40, 4, 3, seed=6)
    small_fit(tmp_path, X, y, folder="a-different-run", max_iter=6)
    from jsoftmax.io import files as storage

    newest = storage.list_checkpoints(tmp_path / "a-different-run")[0]
    newest.write_bytes(newest.read_bytes()[:100])  # damaged
    resumed = small_fit(tmp_path, X, y, folder="a-different-run", resume=True, max_iter=12)
    assert resumed.n_iter == 12


# --- The command line: user errors are one line and exit status 2 --------------------------


def run_cli(capsys, *argv):
    from jsoftmax import cli

    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_cli_os_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        ("train", str(folder / "x.csv")),  # a missing file
        ("train", str(folder)),  # a directory as the data file
        ("train", "--dataset", "iris", "--quiet", "--checkpoint", str(tmp_path / "file.txt")),
        ("train", "--dataset", "iris", "--quiet", "--plot", str(folder)),  # a directory as the plot
    ]
    (tmp_path / "file.txt").write_text("not a folder")
    for argv in cases:
        code, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jsoftmax train: error:"), (argv, err)
    assert sorted(p.name for p in folder.iterdir()) == []  # no temporary plot left behind


@pytest.mark.parametrize("size", ["-1", "1", "1.5"])
def test_cli_test_size_out_of_range(capsys, size):
    code, err = run_cli(capsys, "train", "--dataset", "iris", "--test-size", size)
    assert code == 2 and "--test-size must lie in [0, 1)" in err
