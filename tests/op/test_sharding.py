"""Sharding across devices (8 forced host devices) and processes (2, gloo on loopback)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

from ..helpers import rtol

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
WORKERS = HERE.parent / "workers"
TOL = {"float64": rtol("float64"), "float64_soft": rtol("float64"), "float32": rtol("float32")}


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(WORKERS / "sharding_worker.py")], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_eight_devices(report):
    assert report["n_devices"] == 8


@pytest.mark.parametrize("precision", list(TOL))
@pytest.mark.parametrize("mode", ["data", "class", "2d"])
def test_sharded_results_equal_single_device(report, precision, mode):
    row = report[precision][mode]
    for quantity, err in row.items():
        if quantity in ("fit_iters", "grad_W_spec"):
            continue
        if quantity == "predictions_equal":  # arg-max across devices holding different classes
            assert err is True, (mode, precision)
            continue
        assert err <= TOL[precision], (quantity, err)
    assert row["fit_iters"][0] == row["fit_iters"][1]


def test_gradient_stays_sharded_like_W(report):
    assert report["float32"]["class"]["grad_W_spec"] == [None, "model"]
    assert report["float32"]["2d"]["grad_W_spec"] == [None, "model"]


def test_collectives_are_the_designed_ones(report):
    c = report["collectives"]
    assert c["data"]["all_reduce"] >= 1          # loss, dW, db summed over the rows' devices
    assert c["class"]["all_reduce"] >= 1         # max and sum of the log-sum-exp over class blocks
    w_size = c["data"]["w_size"]
    for mode in ("class", "2d"):
        large = [g for g in c[mode]["gathered"] if np.prod(g[1]) >= w_size]
        assert not large, f"class-parallel mode gathered something as large as W: {large}"
    # The HLO parser finds a gather of W when there is one (of any layout or dtype).
    assert any(np.prod(g[1]) >= w_size for g in c["explicit_gather"]), c["explicit_gather"]


def test_class_parallel_memory_per_device_shrinks(report):
    m = report["memory"]
    w = m["W_bytes"]
    # Arguments and outputs (W, its gradient) per device: about 1/2 with 2 class devices,
    # about 1/8 with 8; X (64x64 f32) and the labels are small next to W (64x8192 f32).
    assert m["class"]["argument_bytes"] <= m["single"]["argument_bytes"] / 2 + w * 0.05
    assert m["class8"]["argument_bytes"] <= m["single"]["argument_bytes"] / 8 + w * 0.05
    assert m["class8"]["output_bytes"] <= m["single"]["output_bytes"] / 8 + w * 0.05


def test_inputs_laid_out_differently_are_resharded_not_misread(report):
    assert report["relayout"]["risk"] <= 1e-6 and report["relayout"]["dW"] <= 1e-5


def test_bad_mesh_input_is_a_clear_error(report):
    bad = report["bad_input"]
    assert "`data_axis`='batch' is not an axis of the mesh; its axes are ('data', 'model')" in bad["axis"]
    assert "the 60 rows cannot be split evenly over mesh axis 'data' of size 8" in bad["rows"]
    assert "the 6 classes cannot be split evenly over mesh axis 'model' of size 8" in bad["classes"]
    assert "name at least one of `data_axis` and `class_axis`" in bad["no_axis"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_with_optax_and_the_default_solvers(tmp_path):
    out = tmp_path / "W.npz"
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(WORKERS / "distributed_worker.py"), str(i), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the 2-process run did not finish in 240 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)

    import jax.numpy as jnp

    import jsoftmax

    from ..helpers import distributed_data as data
    from ..helpers import sparse_rows

    X, y = data()
    one = jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), jnp.asarray(X), jnp.asarray(y),
                       optax.lbfgs(), l2=0.05, max_iter=40, tol=0.0)
    with np.load(out) as saved:
        W, n_iter = saved["W"], int(saved["n_iter"])
        default_solvers = {"lbfgs": saved["W_lbfgs"], "newton-cg": saved["W_newton"]}
        sparse_W = saved["W_sparse"]
    assert n_iter == one.n_iter
    err = np.linalg.norm(W - np.asarray(one.params.W)) / np.linalg.norm(np.asarray(one.params.W))
    assert err <= 1e-5, err
    # The default solvers across the two processes equal the one-process float64 fit.
    from jsoftmax._compat import enable_x64

    with enable_x64():
        for solver, W in default_solvers.items():
            alone = jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), X.astype(np.float64), y,
                                 solver=solver, l2=0.05, tol=1e-12, max_iter=500)
            reference = np.asarray(alone.params.W)
            assert np.abs(W - reference).max() <= 1e-10 * np.abs(reference).max(), solver
        # A sparse X of which each process laid out only its own rows: the same fit.
        alone = jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), sparse_rows(X.astype(np.float64)),
                             y, solver="lbfgs", l2=0.05, tol=1e-12, max_iter=500)
        reference = np.asarray(alone.params.W)
        assert np.abs(sparse_W - reference).max() <= 1e-10 * np.abs(reference).max()
    # Processes that disagree on l2, on their rows' count, or where one holds a NaN: every
    # process raised the same error (no hang).
    messages = [json.loads((tmp_path / f"W.npz.{process}.txt").read_text()) for process in (0, 1)]
    assert messages[0] == messages[1], messages
    assert messages[0]["option"] == ("the 2 processes disagree on l2 (this is process #): every process must "
                                     "call fit with the same shapes and options.")
    assert messages[0]["rows"] == ("every process must hold the same number of rows and features of `X`; they "
                                   "hold [(48, 5), (47, 5)] (this is process #).")
    assert messages[0]["nan"] == "`X` holds NaN or inf on process(es) [1]; clean or impute the features first."


def test_sparse_x_shards_over_rows(report):
    sparse = report["sparse"]
    for chunks in ("chunks_None", "chunks_5"):
        for quantity, err in sparse[chunks].items():
            assert err <= TOL["float64"], (chunks, quantity, err)
    assert sparse["fit"]["W"] <= 1e-9 and sparse["fit"]["iters"][0] == sparse["fit"]["iters"][1]
    assert sparse["refused"]["class_axis"].startswith("ValueError: a sparse X is sharded over its rows only")
    assert sparse["refused"]["newton"].startswith("ValueError: solver='newton-cg' is not supported for a sparse X")
    # X as ProcessRows (each process lays out its own rows; here one process holds them all).
    for name in ("process_rows", "process_rows_dense"):
        assert sparse[name]["W"] <= 1e-9 and sparse[name]["iters"][0] == sparse[name]["iters"][1], (name, sparse[name])
    assert "must split evenly over its 4 device(s)" in sparse["refused"]["process_rows_uneven"]
    assert "needs a `mesh` with a `data_axis`" in sparse["refused"]["process_rows_no_mesh"]


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_gradients_come_back_with_the_inputs_types_on_explicit_and_auto_axes(report, kind):
    # A batch placed on a mesh the README's way (jax.make_mesh: Explicit axes in recent jax),
    # differentiated under jax.set_mesh and under jit, with and without mesh=; and the same on
    # Auto axes. Each equals one device's gradient and has its input's type and sharding.
    for name, row in report["axis_types"][kind].items():
        assert "failed" not in row, (kind, name, row)
        assert row["error"] <= TOL["float32"] and row["same_types"] and row["same_shardings"], (kind, name, row)
