"""X kept in host memory and streamed to the device a block of rows at a time
(``jsoftmax._host``, ``feature_memory="host"``): on this CPU the path runs for real — X in the
CPU device's ``pinned_host`` memory, each block moved by ``jax.device_put`` inside the compiled
loop, one block prefetched ahead — and everything it computes equals the in-device path: the
loss, gradient, Hessian products and predictions, and whole fits to 1e-10."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jsoftmax
from jsoftmax import _api, _host, _layouts
from jsoftmax.io import files as storage

from ..helpers import assert_normwise_close, assert_same_passes


def _problem(n=101, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, k, n)
    params = jsoftmax.Params(jnp.asarray(rng.standard_normal((d, k)) * 0.3), jnp.asarray(np.linspace(-0.2, 0.2, k)))
    return X, y, params


def _prepared(params, X, y, chunk_rows, feature_memory):
    return _api.prepare(params, X, y, sample_weight=np.linspace(0.5, 1.5, X.shape[0]), l2=0.1,
                        label_smoothing=0.1, chunk_rows=chunk_rows, in_place=True, feature_memory=feature_memory)


def test_x_lies_in_host_memory_and_every_block_is_its_rows(x64):
    X, _, _ = _problem(37, 5)
    placed = _host.place(X, 8)
    assert isinstance(placed, _host.HostRows) and placed.rows.sharding.memory_kind == "pinned_host"
    assert placed.shape == (37, 5) and placed.dtype == np.float64
    taken = jax.jit(lambda rows, start, size: rows.chunk(start, size), static_argnums=2)
    for size in (1, 8, 37):
        for start in (0, 37 - size, (37 - size) // 2):
            block = taken(placed, start, size)
            assert block.sharding.memory_kind == "device"
            np.testing.assert_array_equal(block, X[start:start + size])
    assert float(jax.jit(lambda rows: rows.nonfinite_marker())(placed)) == 0.0
    bad = X.copy()
    bad[20, 3] = np.inf
    assert np.isnan(jax.jit(lambda rows: rows.nonfinite_marker())(_host.place(bad, 8)))
    np.testing.assert_array_equal(np.asarray(placed), X)


@pytest.mark.parametrize("rows", [5, 8, 12, 40])  # a short last block or none; one block; one whole
def test_prefetching_loop_visits_every_block_once_in_order(x64, rows):
    X, _, _ = _problem(40, 3)
    placed = _host.place(X, rows)

    def body(carry, start, block):
        total, seen = carry
        return total + start * jnp.sum(block), seen + block.shape[0]

    got = jax.jit(lambda p: _layouts.over_row_blocks(p, body, (jnp.zeros(()), 0)))(placed)
    want = sum(start * X[start:start + rows].sum() for start in range(0, 40, rows))
    np.testing.assert_allclose(got[0], want, rtol=1e-13)
    assert int(got[1]) == 40


@pytest.mark.parametrize("chunk_rows", [16, 25, 64, 101])
def test_loss_gradient_hvp_and_predictions_equal_the_in_device_ones(x64, chunk_rows):
    X, y, params = _problem()
    problem, spec, plan = _prepared(params, X, y, chunk_rows, "host")
    device, _, _ = _prepared(params, X, y, chunk_rows, "device")
    assert isinstance(problem.X, _host.HostRows) and not isinstance(device.X, _host.HostRows)
    assert_same_passes(params, problem, device, spec, plan, X)


@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_fit_from_host_memory_equals_the_in_device_fit(x64, solver):
    # 5,000 × 300 in float64: this CPU's plan takes 2,048-row chunks, so the fit streams two
    # full blocks (one prefetched) and a short last one.
    X, y, _ = _problem(5000, 300, 10, seed=3)
    problem, _, plan = _prepared(jsoftmax.Params(jnp.zeros((300, 10)), jnp.zeros(10)), X, y, None, "host")
    assert 5000 // plan.chunk_rows >= 2 and 5000 % plan.chunk_rows
    start = jsoftmax.Params(jnp.zeros((300, 10)), jnp.zeros(10))
    got = jsoftmax.fit(start, X, y, solver=solver, l2=1e-2, tol=1e-9, feature_memory="host")
    want = jsoftmax.fit(start, X, y, solver=solver, l2=1e-2, tol=1e-9, feature_memory="device")
    assert got.converged and got.n_iter == want.n_iter
    err = np.linalg.norm(got.params.W - want.params.W) / np.linalg.norm(want.params.W)
    assert err <= 1e-10, err


def test_a_memmap_and_a_float32_x_stream_from_host_memory(tmp_path):
    X, y, _ = _problem(600, 7, 3, seed=4)
    path = tmp_path / "features.npy"
    np.save(path, X.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    start = jsoftmax.Params(jnp.zeros((7, 3), jnp.float32), jnp.zeros(3, jnp.float32))
    got = jsoftmax.fit(start, mapped, y, solver="lbfgs", l2=1e-2, tol=1e-5, feature_memory="host")
    want = jsoftmax.fit(start, np.asarray(mapped), y, solver="lbfgs", l2=1e-2, tol=1e-5, feature_memory="device")
    assert got.converged
    assert_normwise_close(got.params.W, want.params.W, 1e-5, "W")


def test_estimator_from_host_memory_equals_the_in_device_one():
    X, y, _ = _problem(400, 6, 3, seed=5)
    got = jsoftmax.SoftmaxRegression(feature_memory="host", standardize=True, tol=1e-8).fit(X, y)
    want = jsoftmax.SoftmaxRegression(feature_memory="device", standardize=True, tol=1e-8).fit(X, y)
    np.testing.assert_allclose(got.coef_, want.coef_, rtol=1e-10, atol=1e-12)
    assert got.get_params()["feature_memory"] == "host"


def test_auto_keeps_x_on_the_device_of_a_cpu_and_in_host_memory_when_it_lies_there(x64):
    X, y, params = _problem(200, 4)
    assert _host.free_device_bytes() is None  # a CPU does not report a device memory to fill
    problem, _, _ = _prepared(params, X, y, None, "auto")
    assert not isinstance(problem.X, _host.HostRows)
    on_host = jax.device_put(X, _host.host_sharding())
    problem, _, _ = _prepared(params, on_host, y, None, "auto")
    assert isinstance(problem.X, _host.HostRows)


def test_auto_chooses_host_memory_when_x_and_the_working_set_exceed_the_free_device_memory(monkeypatch):
    X = np.zeros((1000, 10), np.float32)
    extra = _host.working_bytes(10, 5, 256)
    monkeypatch.setattr(_host, "free_device_bytes", lambda device=None: X.nbytes + extra)
    assert not _host.keeps_on_host("auto", X, extra)  # fits exactly
    monkeypatch.setattr(_host, "free_device_bytes", lambda device=None: X.nbytes + extra - 1)
    assert _host.keeps_on_host("auto", X, extra)
    assert not _host.keeps_on_host("device", X, extra) and _host.keeps_on_host("host", X, extra)
    assert not _host.keeps_on_host("auto", jnp.asarray(X), extra)  # on the device already: it fitted


def test_fingerprint_is_of_the_values(x64):
    X, _, _ = _problem(40, 6)
    assert storage.fingerprint([_host.place(X, 8)], {}) == storage.fingerprint([X], {})


# --- hostile ----------------------------------------------------------------------------


def test_bad_feature_memory_is_refused_naming_it():
    X, y, _ = _problem(50, 3)
    for bad in ("gpu", None, 1):
        with pytest.raises(ValueError, match="feature_memory"):
            jsoftmax.fit(jnp.zeros((3, 4)), X.astype(np.float32), y, solver="lbfgs", feature_memory=bad)
    with pytest.raises(ValueError, match="feature_memory"):
        jsoftmax.SoftmaxRegression(feature_memory="disk").fit(X, y)


def test_host_memory_refuses_minibatches_meshes_and_sparse_x():
    import optax

    X, y, _ = _problem(64, 3)
    X = X.astype(np.float32)
    with pytest.raises(ValueError, match="feature_memory='host'.*batch_size"):
        jsoftmax.fit(jnp.zeros((3, 4)), X, y, optax.adam(0.1), batch_size=16, feature_memory="host")
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="feature_memory='host'.*mesh"):
        jsoftmax.fit(jnp.zeros((3, 4)), X, y, solver="lbfgs", mesh=mesh, data_axis="data", feature_memory="host")
    with pytest.raises(ValueError, match="feature_memory='host' takes a dense X"):
        jsoftmax.fit(jnp.zeros((3, 4)), sp.csr_matrix(X), y, solver="lbfgs", feature_memory="host")
    with pytest.raises(ValueError, match="feature_memory='host'"):
        jsoftmax.SoftmaxRegression(feature_memory="host", solver="adam", batch_size=16).fit(X, y)


@pytest.mark.parametrize("where", [(0, 0), (2500, 150), (4999, 299)])
def test_a_non_finite_value_in_host_memory_is_refused(x64, where):
    X, y, _ = _problem(5000, 300, 3, seed=6)
    X[where] = np.inf if where[0] else np.nan
    with pytest.raises(ValueError, match="`X`"):
        jsoftmax.fit(jnp.zeros((300, 3)), X, y, solver="lbfgs", feature_memory="host")
