"""One process of a 2-process jax.distributed run (started by tests/op/test_sharding.py).

    python tests/workers/distributed_worker.py PROCESS_ID PORT OUT.npz

Each process owns one CPU device and feeds only its own half of the rows; the mesh spans both
processes and collectives go over loopback with gloo. Process 0 writes the fitted W.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_platforms", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jsoftmax  # noqa: E402
from jsoftmax._compat import enable_x64  # noqa: E402


from tests.helpers import distributed_data as data  # noqa: E402 (the rows the test compares with)
from tests.helpers import sparse_rows  # noqa: E402


def main():
    process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    X, y = data()
    half = slice(process_id * 48, (process_id + 1) * 48)  # this process's rows only
    X_global = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data", None)), X[half])
    y_global = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), y[half])
    start = jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4))
    result = jsoftmax.fit(start, X_global, y_global, optax.lbfgs(), l2=0.05, max_iter=40, tol=0.0,
                          mesh=mesh, data_axis="data")
    W = np.asarray(jax.experimental.multihost_utils.process_allgather(result.params.W, tiled=True))
    # The default solvers, in float64, on the same rows: each process feeds only its own.
    fitted = {}
    with enable_x64():
        X64 = X.astype(np.float64)
        X_global = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data", None)), X64[half])
        y_global = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), y[half])
        for solver in ("lbfgs", "newton-cg"):
            run = jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), X_global, y_global,
                               solver=solver, l2=0.05, tol=1e-12, max_iter=500, mesh=mesh, data_axis="data")
            fitted[solver] = np.asarray(jax.experimental.multihost_utils.process_allgather(run.params.W, tiled=True))
        # A sparse X, each process laying out only its own rows (jsoftmax.ProcessRows).
        Xs = sparse_rows(X64)
        run = jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), jsoftmax.ProcessRows(Xs[half]),
                           y_global, solver="lbfgs", l2=0.05, tol=1e-12, max_iter=500, mesh=mesh, data_axis="data")
        fitted["sparse"] = np.asarray(jax.experimental.multihost_utils.process_allgather(run.params.W, tiled=True))
        # Processes that disagree on an option, on their rows' count, or where one holds a NaN:
        # the same clear error on each, no hang.
        nan_rows = Xs[half].copy()
        if process_id == 1:
            nan_rows.data[3] = np.nan
        cases = {
            "option": lambda: jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)), X_global, y_global,
                                           solver="lbfgs", l2=0.05 if process_id == 0 else 0.06, max_iter=5,
                                           mesh=mesh, data_axis="data"),
            "rows": lambda: jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)),
                                         jsoftmax.ProcessRows(Xs[half][:48 - process_id]), y_global,
                                         solver="lbfgs", max_iter=5, mesh=mesh, data_axis="data"),
            "nan": lambda: jsoftmax.fit(jsoftmax.Params(jnp.zeros((5, 4)), jnp.zeros(4)),
                                        jsoftmax.ProcessRows(nan_rows), y_global, solver="lbfgs", max_iter=5,
                                        mesh=mesh, data_axis="data"),
        }
        messages = {}
        for name, call in cases.items():
            try:
                call()
                messages[name] = "no error"
            except ValueError as err:
                messages[name] = str(err).replace(f"process {process_id})", "process #)")
        with open(f"{out}.{process_id}.txt", "w") as handle:
            handle.write(json.dumps(messages))
    if process_id == 0:
        np.savez(out, W=W, n_iter=result.n_iter, W_lbfgs=fitted["lbfgs"], W_newton=fitted["newton-cg"],
                 W_sparse=fitted["sparse"])
    jax.distributed.shutdown()


if __name__ == "__main__":
    import jax.experimental.multihost_utils  # noqa: F401

    main()
