"""A large NumPy X is read by the CPU device in place (``jsoftmax._inplace``): every chunk equals
X's rows for every misalignment, fits and predictions equal those on a copied X, and bad values
in any part of X (the adopted rows or the two copied edges) are still refused."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax import _api, _inplace
from jsoftmax.io import files as storage
from jsoftmax.train import lbfgs
from jsoftmax.sklearn.common import column_moments

from ..helpers import assert_same_passes


@pytest.fixture
def small_in_place(monkeypatch):
    """Read X in place whatever its size, so that small test problems take that path."""
    monkeypatch.setattr(_inplace, "MIN_BYTES", 0)


def misaligned(n, d, offset_bytes, dtype=np.float64, seed=0):
    """An (n, d) C-ordered array whose buffer starts ``offset_bytes`` past a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = _inplace.aligned_empty((n * d + 64 // itemsize,), dtype)
    X = raw[offset_bytes // itemsize:offset_bytes // itemsize + n * d].reshape(n, d)
    X[...] = np.random.default_rng(seed).standard_normal((n, d))
    assert X.ctypes.data % 64 == offset_bytes
    return X


def test_aligned_empty_is_adopted_by_the_device_without_a_copy():
    A = _inplace.aligned_empty((100, 7), np.float32)
    assert A.ctypes.data % 64 == 0 and A.shape == (100, 7) and A.dtype == np.float32
    A[...] = 1.5
    assert jax.device_put(A).unsafe_buffer_pointer() == A.ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_chunk_is_x_rows_for_every_misalignment(small_in_place, x64, dtype):
    itemsize = np.dtype(dtype).itemsize
    taken = jax.jit(lambda X, start, size: X.chunk(start, size), static_argnums=2)
    offsets = (4, 16, 32, 60) if itemsize == 4 else (8, 16, 48, 56)  # s = 15, 12, 8, 1 / 7, 6, 2, 1
    for offset, (n, d) in itertools.product(offsets, [(7, 16), (9, 17)]):
        X = misaligned(n, d, offset, dtype)
        placed = _inplace.place(X, 3)
        assert isinstance(placed, _inplace.InPlaceRows), offset
        # The rows are the caller's buffer itself: no copy was made.
        assert placed.body.unsafe_buffer_pointer() == X.ctypes.data + placed.shift * itemsize
        for size in range(1, n + 1):
            for start in range(n - size + 1):
                np.testing.assert_array_equal(placed.chunk(start, size), X[start:start + size])
        for size in (1, 3, n - 1):  # a traced start takes the first, middle or last branch
            for start in range(n - size + 1):
                np.testing.assert_array_equal(taken(placed, start, size), X[start:start + size])
        assert float(placed.nonfinite_marker()) == 0.0


def test_x_that_cannot_be_read_in_place_is_copied(small_in_place, x64):
    X = misaligned(50, 8, 16)
    assert isinstance(_inplace.place(np.asfortranarray(X), 8), jax.Array)  # not C-ordered
    assert isinstance(_inplace.place(misaligned(50, 3, 8), 8), jax.Array)  # D below the shift (7 values)
    assert isinstance(_inplace.place(misaligned(1, 8, 16), 8), jax.Array)  # a single row
    aligned = _inplace.aligned_empty((50, 8), np.float64)
    aligned[...] = X
    placed = _inplace.place(aligned, 8)  # already aligned: JAX adopts it itself
    assert isinstance(placed, jax.Array) and placed.unsafe_buffer_pointer() == aligned.ctypes.data


def test_small_x_is_copied_as_before(x64):
    assert isinstance(_inplace.place(misaligned(50, 8, 16), 8), jax.Array)


def _prepared(X, y, chunk_rows, in_place):
    d, k = X.shape[1], 4
    params = jsoftmax.Params(jnp.asarray(np.random.default_rng(1).standard_normal((d, k)) * 0.3),
                             jnp.asarray(np.linspace(-0.2, 0.2, k)))
    return params, _api.prepare(params, X, y, sample_weight=np.linspace(0.5, 1.5, X.shape[0]), l2=0.1,
                                label_smoothing=0.1, chunk_rows=chunk_rows, in_place=in_place)


@pytest.mark.parametrize("chunk_rows", [16, 25, 64, 101])  # several chunks, a short last one, one chunk
def test_loss_gradient_hvp_and_predictions_equal_those_on_a_copied_x(small_in_place, x64, chunk_rows):
    X = misaligned(101, 12, 16)
    y = np.random.default_rng(2).integers(0, 4, 101)
    params, (problem, spec, plan) = _prepared(X, y, chunk_rows, True)
    _, (copied, _, _) = _prepared(X, y, chunk_rows, False)
    assert isinstance(problem.X, _inplace.InPlaceRows) and isinstance(copied.X, jax.Array)
    assert_same_passes(params, problem, copied, spec, plan, X)


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_fit_in_place_equals_fit_on_a_copied_x(small_in_place, x64, solver):
    X = misaligned(300, 10, 32)
    y = np.random.default_rng(3).integers(0, 3, 300)
    start = jsoftmax.Params(jnp.zeros((10, 3)), jnp.zeros(3))
    got = jsoftmax.fit(start, X, y, solver=solver, l2=1e-3, tol=1e-9)
    want = jsoftmax.fit(start, jnp.asarray(X), y, solver=solver, l2=1e-3, tol=1e-9)
    assert got.converged and got.n_iter == want.n_iter
    np.testing.assert_allclose(got.params.W, want.params.W, rtol=1e-12, atol=1e-14)
    many = jsoftmax.fit_many(jsoftmax.Params(jnp.zeros((2, 10, 3)), jnp.zeros((2, 3))), X, y,
                             sample_weights=np.ones((2, 300)), l2=np.array([1e-3, 1e-3]), solver=solver, tol=1e-9)
    np.testing.assert_allclose(many.params.W[1], want.params.W, rtol=1e-9, atol=1e-11)


def test_estimator_in_place_equals_the_copied_path(small_in_place):
    X = misaligned(2000, 9, 16)  # over the row-bucket bound below, so X itself is used
    y = np.random.default_rng(4).integers(0, 3, 2000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("jsoftmax.sklearn.common.ROW_BUCKET_MAX_BYTES", 0)
        got = jsoftmax.SoftmaxRegression(standardize=True, tol=1e-8).fit(X, y)
        want = jsoftmax.SoftmaxRegression(standardize=True, tol=1e-8).fit(np.asfortranarray(X), y)
    np.testing.assert_allclose(got.coef_, want.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.predict_proba(X), want.predict_proba(np.asfortranarray(X)), rtol=1e-10)
    np.testing.assert_array_equal(got.predict(X), want.predict(np.asfortranarray(X)))


@pytest.mark.parametrize("where", [(0, 0), (0, 1), (150, 5), (299, 0), (299, 9)])
def test_a_nan_anywhere_in_x_is_refused(small_in_place, x64, where):
    # (0, ·) lies in the first copied edge, (299, 0) in the adopted rows, (299, 9) in the last edge.
    X = misaligned(300, 10, 16)
    X[where] = np.nan
    with pytest.raises(ValueError, match="`X`"):
        jsoftmax.fit(jnp.zeros((10, 3)), X, np.zeros(300, int), solver="lbfgs")


def test_checkpoint_fingerprint_is_of_the_values_not_of_where_they_lie(small_in_place, x64):
    a, b = misaligned(40, 10, 16), misaligned(40, 10, 48)
    placed_a, placed_b = _inplace.place(a, 8), _inplace.place(b, 8)
    assert placed_a.shift != placed_b.shift
    assert storage.fingerprint([placed_a], {}) == storage.fingerprint([b], {})
    b[3, 3] += 1.0
    assert storage.fingerprint([placed_a], {}) != storage.fingerprint([placed_b], {})


def test_a_fold_s_moments_are_taken_without_copying_its_rows():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((1000, 6)) * 20 + 1e3
    rows = rng.random(1000) < 0.7
    mean, std = column_moments(X, block_rows=64, rows=rows)
    np.testing.assert_allclose(mean, X[rows].mean(0), rtol=1e-13)
    np.testing.assert_allclose(std, X[rows].std(0), rtol=1e-10)


def test_same_shift_reuses_the_compiled_fit(small_in_place, x64):
    y = np.random.default_rng(6).integers(0, 3, 200)
    start = jsoftmax.Params(jnp.zeros((10, 3)), jnp.zeros(3))
    jsoftmax.fit(start, misaligned(200, 10, 16, seed=1), y, solver="lbfgs", max_iter=3)
    before = lbfgs.segment._cache_size()
    jsoftmax.fit(start, misaligned(200, 10, 16, seed=2), y, solver="lbfgs", max_iter=3)
    assert lbfgs.segment._cache_size() == before


def test_a_refit_after_x_changed_in_place_sees_the_new_values(small_in_place, x64):
    X = misaligned(300, 10, 16)
    y = np.random.default_rng(7).integers(0, 3, 300)
    start = jsoftmax.Params(jnp.zeros((10, 3)), jnp.zeros(3))
    first = jsoftmax.fit(start, X, y, solver="lbfgs", tol=1e-9)
    X[:, 0] *= 3.0  # the caller changes its array between fits: nothing of the old X is kept
    again = jsoftmax.fit(start, X, y, solver="lbfgs", tol=1e-9)
    fresh = jsoftmax.fit(start, jnp.asarray(X.copy()), y, solver="lbfgs", tol=1e-9)
    np.testing.assert_allclose(again.params.W, fresh.params.W, rtol=1e-10, atol=1e-12)
    assert not np.allclose(again.params.W, first.params.W)
