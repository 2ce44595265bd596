"""jsoftmax.fit: full-batch while_loop, minibatch scan epochs, early stopping, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jsoftmax
from jsoftmax.io import files as storage

from ..helpers import make_problem


@pytest.fixture
def blobs():
    """A small separable-ish 3-class problem in float64."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 4)) * 2
    y = rng.integers(0, 3, 150)
    X = centers[y] + rng.standard_normal((150, 4))
    return X, y


def start(d, k, dtype=jnp.float64):
    return jsoftmax.Params(jnp.zeros((d, k), dtype), jnp.zeros(k, dtype))


def test_lbfgs_full_batch_reaches_tol_and_the_optimum(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    result = jsoftmax.fit(start(4, 3), X, y, optax.lbfgs(), l2=0.01, tol=1e-9, max_iter=500)
    assert result.converged and result.stop_reason == "gtol"
    assert result.grad_norm <= 1e-9
    g = jsoftmax.risk_grad(result.params, X, y, l2=0.01)
    assert float(max(jnp.max(jnp.abs(g.W)), jnp.max(jnp.abs(g.b)))) <= 1e-9
    assert result.history["loss"][0] == pytest.approx(np.log(3))
    assert len(result.history["loss"]) == result.n_iter + 1
    assert np.all(np.diff(result.history["loss"]) <= 1e-12)  # L-BFGS with line search descends


def test_full_batch_other_optimizers_and_schedules(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    schedule = optax.exponential_decay(0.1, transition_steps=1000, decay_rate=0.5)
    ref = jsoftmax.fit(start(4, 3), X, y, optax.lbfgs(), l2=0.01, tol=1e-10)
    for optimizer in (optax.adam(schedule), optax.sgd(0.5, momentum=0.9)):
        result = jsoftmax.fit(start(4, 3), X, y, optimizer, l2=0.01, tol=1e-6, max_iter=5000)
        assert result.converged and result.stop_reason == "gtol", result
        # Strong convexity (>= l2 = 0.01) bounds the distance to the optimum by |g| / 0.01.
        np.testing.assert_allclose(result.params.W, ref.params.W, atol=1e-6 / 0.01 * np.sqrt(12))


def test_bare_W_in_bare_W_out(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    result = jsoftmax.fit(jnp.zeros((4, 3)), X, y, optax.lbfgs(), l2=0.1)
    assert isinstance(result.params, jax.Array) and result.params.shape == (4, 3)


def test_minibatch_epochs_are_seeded_and_validate(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    kwargs = dict(batch_size=32, max_epochs=5, seed=3, validation_data=(X[:40], y[:40]))
    a = jsoftmax.fit(start(4, 3), X, y, optax.adam(0.05), **kwargs)
    b = jsoftmax.fit(start(4, 3), X, y, optax.adam(0.05), **kwargs)
    c = jsoftmax.fit(start(4, 3), X, y, optax.adam(0.05), **dict(kwargs, seed=4))
    np.testing.assert_array_equal(a.params.W, b.params.W)
    assert not np.array_equal(a.params.W, c.params.W)
    assert a.n_epochs == 5 and a.n_iter == 5 * 5  # ceil(150 / 32) = 5 steps per epoch
    assert len(a.history["val_loss"]) == 5 and len(a.history["val_accuracy"]) == 5
    assert a.history["loss"][-1] < a.history["loss"][0]
    assert a.stop_reason == "max_epochs"


def gradient_recorder(seen):
    """An optax transformation that records every gradient it is given and never moves."""

    def update(updates, state, params=None):
        jax.debug.callback(lambda g: seen.append(np.asarray(g)), updates.W, ordered=True)
        return jax.tree_util.tree_map(jnp.zeros_like, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def test_minibatch_uses_every_sample_each_epoch(x64):
    # 10 rows in batches of 4: 3 steps holding 4, 4 and 2 real rows (the last padded with
    # weight-0 rows). Each step's gradient is its batch's mean, so the real-row-weighted sum of
    # the step gradients must equal the full-data gradient: a dropped, repeated or mis-weighted
    # row (a padded row counted) breaks the equality.
    W, b, X, y = make_problem(10, 3, 4, seed=2, bias=True)
    seen = []
    result = jsoftmax.fit(jsoftmax.Params(W, b), X, y, gradient_recorder(seen), batch_size=4,
                          max_epochs=1)
    assert result.n_iter == 3 and len(seen) == 3
    full = jsoftmax.risk_grad(jsoftmax.Params(W, b), X, y)
    combined = (4 * seen[0] + 4 * seen[1] + 2 * seen[2]) / 10
    np.testing.assert_allclose(combined, full.W, rtol=1e-12, atol=1e-15)
    # One batch holding every row is one full-batch gradient step.
    one = jsoftmax.fit(jsoftmax.Params(W, b), X, y, optax.sgd(0.1), batch_size=10, max_epochs=1)
    np.testing.assert_allclose(one.params.W, W - 0.1 * full.W, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 50])
def test_divergence_is_reported(blobs, batch_size):
    # A step size so large that W overflows: the scores become inf - inf = NaN.
    X, y = jnp.asarray(blobs[0], jnp.float32), jnp.asarray(blobs[1])
    result = jsoftmax.fit(start(4, 3, jnp.float32), X, y, optax.sgd(1e38), batch_size=batch_size,
                          max_iter=50, max_epochs=5)
    assert result.stop_reason == "diverged" and not result.converged
    assert not np.isfinite(result.grad_norm) or not np.isfinite(result.history["loss"][-1])


def test_early_stopping_restores_best(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    # A learning rate so large that the validation loss gets worse: patience must stop it.
    result = jsoftmax.fit(start(4, 3), X, y, optax.sgd(50.0), batch_size=16, max_epochs=200,
                          validation_data=(X, y), patience=3)
    assert result.stop_reason == "early_stopping" and result.converged
    assert result.n_epochs < 200
    best = min(result.history["val_loss"])
    np.testing.assert_allclose(float(jsoftmax.risk(result.params, X, y)), best, rtol=1e-10)


def test_callback_reports_progress(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    seen = []
    jsoftmax.fit(start(4, 3), X, y, optax.lbfgs(), l2=0.01, tol=1e-10, callback=seen.append, callback_every=3)
    assert seen and all("iteration" in s and "loss" in s for s in seen)
    assert [s["iteration"] for s in seen] == sorted(s["iteration"] for s in seen)
    epochs = []
    jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), batch_size=50, max_epochs=4, callback=epochs.append)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]


def test_segmented_full_batch_equals_one_loop(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    one = jsoftmax.fit(start(4, 3), X, y, optax.lbfgs(), l2=0.01, tol=1e-10)
    seg = jsoftmax.fit(start(4, 3), X, y, optax.lbfgs(), l2=0.01, tol=1e-10, callback=lambda _: None,
                       callback_every=4)
    assert one.n_iter == seg.n_iter
    np.testing.assert_array_equal(one.params.W, seg.params.W)


@pytest.mark.parametrize("mode", ["full_batch", "minibatch"])
def test_resume_from_checkpoint_gives_the_same_result(x64, blobs, tmp_path, mode):
    X, y = (jnp.asarray(a) for a in blobs)
    opt = optax.lbfgs() if mode == "full_batch" else optax.adam(0.05)
    common = dict(l2=0.01, tol=1e-12)
    if mode == "full_batch":
        full = dict(max_iter=30)
        part = dict(max_iter=12)
    else:
        full = dict(batch_size=32, max_epochs=8)
        part = dict(batch_size=32, max_epochs=3)
    straight = jsoftmax.fit(start(4, 3), X, y, opt, **common, **full)
    folder = tmp_path / "ckpt"
    jsoftmax.fit(start(4, 3), X, y, opt, **common, **part, checkpoint_dir=str(folder))
    assert storage.list_checkpoints(folder)
    if mode == "full_batch":
        # The first run stopped at its own max_iter; resume with the longer budget.
        resumed = jsoftmax.fit(start(4, 3), X, y, opt, **common, **full, checkpoint_dir=str(folder), resume=True)
        assert resumed.n_iter == straight.n_iter
    else:
        resumed = jsoftmax.fit(start(4, 3), X, y, opt, **common, **full, checkpoint_dir=str(folder), resume=True)
        assert resumed.n_epochs == 8 and resumed.history["loss"] == pytest.approx(straight.history["loss"])
    np.testing.assert_allclose(resumed.params.W, straight.params.W, rtol=1e-12, atol=1e-14)


def test_resume_errors(x64, blobs, tmp_path):
    X, y = (jnp.asarray(a) for a in blobs)
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), batch_size=50, max_epochs=1,
                     checkpoint_dir=str(tmp_path / "empty"), resume=True)
    with pytest.raises(ValueError, match="needs `checkpoint_dir`"):
        jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), resume=True)
    # A checkpoint of another problem (different K) is refused, not half-loaded.
    folder = str(tmp_path / "other")
    jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), batch_size=50, max_epochs=1, checkpoint_dir=folder)
    with pytest.raises(ValueError, match="different"):
        jsoftmax.fit(start(4, 4), X, y, optax.adam(0.1), batch_size=50, max_epochs=2,
                     checkpoint_dir=folder, resume=True)


def test_fit_bad_input(x64, blobs):
    X, y = (jnp.asarray(a) for a in blobs)
    with pytest.raises(TypeError, match="`optimizer` must be an optax.GradientTransformation"):
        jsoftmax.fit(start(4, 3), X, y, "adam")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int or None; got 0"):
        jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), batch_size=0)
    with pytest.raises(ValueError, match="`tol` must be a non-negative number"):
        jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), tol=-1.0)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(n_samples,\) = \(150,\)"):
        jsoftmax.fit(start(4, 3), X, y[:10], optax.adam(0.1))
    with pytest.raises(TypeError, match="validation_data"):
        jsoftmax.fit(start(4, 3), X, y, optax.adam(0.1), batch_size=10, validation_data=X)
