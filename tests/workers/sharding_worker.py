"""Run in a subprocess with 8 forced host devices by tests/op/test_sharding.py; prints JSON.

Not collected by pytest (no test_ prefix). Every figure is computed here and judged there.
"""

import contextlib
import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jsoftmax  # noqa: E402
from jsoftmax._compat import enable_x64  # noqa: E402
from jsoftmax._verify import random_problem  # noqa: E402

MODES = {"data": ("data", None), "class": (None, "model"), "2d": ("data", "model")}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def problem(dtype, n=64, d=6, k=8, soft=False):
    params, X, y, _ = random_problem(n, d, k, dtype=dtype, seed=0, soft=soft, bias=True,
                                     ignore=not soft, scale=2.0)
    return X, params.W, params.b, y


def accuracy(mesh, dtype, soft):
    X, W, b, y = problem(dtype, soft=soft)
    p = jsoftmax.Params(W, b)
    kw = dict(l2=0.1, label_smoothing=0.1)
    v0, g0 = jsoftmax.value_and_grad(p, X, y, **kw)
    gx0 = jax.grad(lambda X: jsoftmax.risk(p, X, y, **kw))(X)
    l0, lg0 = jax.value_and_grad(lambda X, W: jsoftmax.linear_cross_entropy(X, W, y, bias=b, z_loss=1e-2), (0, 1))(X, W)
    n0 = jax.grad(lambda X, W: jsoftmax.linear_cross_entropy(X, W, y, reduction="none").sum(), (0, 1))(X, W)
    f0 = jsoftmax.fit(p, X, y, optax.lbfgs(), l2=0.1, max_iter=5, tol=0.0)
    _, pred0, acc0 = jsoftmax.linear_cross_entropy(X, W, y, bias=b, return_predictions=True, return_accuracy=True)
    out = {}
    for mode, (da, ca) in MODES.items():
        sh = dict(mesh=mesh, data_axis=da, class_axis=ca)
        v, g = jsoftmax.value_and_grad(p, X, y, **kw, **sh)
        gx = jax.grad(lambda X: jsoftmax.risk(p, X, y, **kw, **sh))(X)
        l, lg = jax.value_and_grad(lambda X, W: jsoftmax.linear_cross_entropy(X, W, y, bias=b, z_loss=1e-2, **sh), (0, 1))(X, W)
        n = jax.grad(lambda X, W: jsoftmax.linear_cross_entropy(X, W, y, reduction="none", **sh).sum(), (0, 1))(X, W)
        f = jsoftmax.fit(p, X, y, optax.lbfgs(), l2=0.1, max_iter=5, tol=0.0, **sh)
        _, pred, acc = jsoftmax.linear_cross_entropy(X, W, y, bias=b, return_predictions=True,
                                                     return_accuracy=True, **sh)
        # Several row chunks per device (8 or 16 rows per device, chunks of 3: with a remainder).
        vc, gc = jsoftmax.value_and_grad(p, X, y, chunk_rows=3, **kw, **sh)
        nc = jax.grad(lambda X, W: jsoftmax.linear_cross_entropy(X, W, y, reduction="none", chunk_size=3,
                                                                 **sh).sum(), (0, 1))(X, W)
        out[mode] = {
            "risk": rel(v, v0), "dW": rel(g.W, g0.W), "db": rel(g.b, g0.b), "dX": rel(gx, gx0),
            "lce": rel(l, l0), "lce_dX": rel(lg[0], lg0[0]), "lce_dW": rel(lg[1], lg0[1]),
            "lce_none_dX": rel(n[0], n0[0]), "lce_none_dW": rel(n[1], n0[1]),
            "fit_W": rel(f.params.W, f0.params.W), "fit_iters": [f.n_iter, f0.n_iter],
            "chunked_risk": rel(vc, v0), "chunked_dW": rel(gc.W, g0.W),
            "chunked_lce_none_dX": rel(nc[0], n0[0]), "chunked_lce_none_dW": rel(nc[1], n0[1]),
            "grad_W_spec": list(g.W.sharding.spec),
            "predictions_equal": bool(np.array_equal(np.asarray(pred), np.asarray(pred0))),
            "accuracy": rel(acc, acc0),
        }
    return out


GATHER = re.compile(r"=\s*(.*?)\s+all-gather(?:-start)?\(")
SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")


def gathered_shapes(hlo: str):
    """(dtype, shape) of the result of every all-gather in an HLO module's text."""
    shapes = []
    for line in hlo.splitlines():
        for result in GATHER.findall(line):
            for dtype, dims in SHAPE.findall(result):
                shapes.append((dtype, tuple(int(v) for v in dims.split(",") if v)))
    return shapes


def collectives(mesh):
    # W (16, 128) is twice as large as X (64, 16): a gathered result as large as W is W.
    X, W, b, y = problem(jnp.float32, n=64, d=16, k=128)
    out = {}
    for mode, (da, ca) in MODES.items():
        fn = jax.jit(lambda W, b, X: jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y, check_values=False,
                                                              mesh=mesh, data_axis=da, class_axis=ca))
        hlo = fn.lower(W, b, X).compile().as_text()
        gathers = gathered_shapes(hlo)
        out[mode] = {
            "all_reduce": hlo.count("all-reduce(") + hlo.count("all-reduce-start("),
            "gathered": [[dtype, list(shape)] for dtype, shape in gathers],
            "w_size": int(W.size),
        }
    # The parser itself: an explicit gather of W must be seen.
    gather_w = jax.jit(lambda W: 2 * W, out_shardings=NamedSharding(mesh, P()))
    sharded_w = jax.device_put(W, NamedSharding(mesh, P(None, "model")))
    out["explicit_gather"] = [[d, list(s)] for d, s in
                              gathered_shapes(gather_w.lower(sharded_w).compile().as_text())]
    return out


def memory(mesh):
    X, W, b, y = problem(jnp.float32, n=64, d=64, k=8192)
    out = {}
    for mode, sh in {"single": {}, "class": dict(mesh=mesh, class_axis="model"),
                     "class8": dict(mesh=jax.make_mesh((8,), ("model",)), class_axis="model")}.items():
        fn = jax.jit(lambda W, b, X: jsoftmax.value_and_grad(jsoftmax.Params(W, b), X, y, check_values=False, **sh))
        stats = fn.lower(W, b, X).compile().memory_analysis()
        out[mode] = {"argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
                     "temp_bytes": stats.temp_size_in_bytes}
    out["W_bytes"] = W.size * 4
    return out


def relayout(mesh):
    X, W, b, y = problem(jnp.float32)
    p = jsoftmax.Params(W, b)
    want = jsoftmax.value_and_grad(p, X, y, mesh=mesh, data_axis="data", class_axis="model")
    odd = jax.device_put(y, NamedSharding(mesh, P("model")))  # labels laid out unlike X
    Xr = jax.device_put(X, NamedSharding(mesh, P("model", None)))  # rows over the other axis
    got = jsoftmax.value_and_grad(p, Xr, odd, mesh=mesh, data_axis="data", class_axis="model")
    return {"risk": rel(got[0], want[0]), "dW": rel(got[1].W, want[1].W)}


def bad_input(mesh):
    X, W, b, y = problem(jnp.float32)
    cases = {
        "axis": dict(mesh=mesh, data_axis="batch"),
        "rows": dict(mesh=jax.make_mesh((8, 1), ("data", "model")), data_axis="data", X=X[:60], y=y[:60]),
        "classes": dict(mesh=jax.make_mesh((1, 8), ("data", "model")), class_axis="model", W=W[:, :6], b=b[:6]),
        "no_axis": dict(mesh=mesh),
    }
    out = {}
    for name, case in cases.items():
        Xc, yc = case.pop("X", X), case.pop("y", y)
        Wc, bc = case.pop("W", W), case.pop("b", b)
        try:
            jsoftmax.value_and_grad(jsoftmax.Params(Wc, bc), Xc, yc, **case)
            out[name] = "no error"
        except (ValueError, TypeError) as err:
            out[name] = f"{type(err).__name__}: {err}"
    return out


def sparse_rows(mesh):
    """Data-parallel over rows with a sparse X (each device its own rows) against one device."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, d, k = 64, 30, 6
    X = sp.random(n, d, density=0.2, format="lil", random_state=0)
    X[10, :] = 0  # an empty row
    X = X.tocsr()
    y = jnp.asarray(rng.integers(0, k, n))
    p = jsoftmax.Params(jnp.asarray(rng.standard_normal((d, k))), jnp.asarray(rng.standard_normal(k)))
    v0, g0 = jsoftmax.value_and_grad(p, X, y, l2=0.1)
    f0 = jsoftmax.fit(p, X, y, solver="lbfgs", l2=0.1, tol=1e-10)
    out = {}
    for rows in (None, 5):  # 16 rows per device; chunks of 5 leave a remainder
        sh = dict(mesh=mesh, data_axis="data", chunk_rows=rows)
        v, g = jsoftmax.value_and_grad(p, X, y, l2=0.1, **sh)
        out[f"chunks_{rows}"] = {"risk": rel(v, v0), "dW": rel(g.W, g0.W), "db": rel(g.b, g0.b)}
    f = jsoftmax.fit(p, X, y, solver="lbfgs", l2=0.1, tol=1e-10, mesh=mesh, data_axis="data")
    out["fit"] = {"W": rel(f.params.W, f0.params.W), "iters": [f.n_iter, f0.n_iter]}
    # X given as this process's rows (here the only process's: all of them), sparse and dense.
    for name, rows in (("process_rows", X), ("process_rows_dense", X.toarray())):
        f = jsoftmax.fit(p, jsoftmax.ProcessRows(rows), y, solver="lbfgs", l2=0.1, tol=1e-10, mesh=mesh,
                         data_axis="data")
        out[name] = {"W": rel(f.params.W, f0.params.W), "iters": [f.n_iter, f0.n_iter]}
    refused = {}
    for name, kwargs in {"class_axis": dict(class_axis="model"),
                         "newton": dict(data_axis="data", solver="newton-cg"),
                         "process_rows_uneven": dict(data_axis="data", solver="lbfgs"),
                         "process_rows_no_mesh": dict(solver="lbfgs")}.items():
        try:
            if name == "process_rows_uneven":  # 62 rows over 4 devices
                jsoftmax.fit(p, jsoftmax.ProcessRows(X[:62]), y[:62], mesh=mesh, **kwargs)
            elif name == "process_rows_no_mesh":
                jsoftmax.fit(p, jsoftmax.ProcessRows(X), y, **kwargs)
            elif name == "newton":
                jsoftmax.fit(p, X, y, mesh=mesh, **kwargs)
            else:
                jsoftmax.risk(p, X, y, mesh=mesh, **kwargs)
            refused[name] = "no error"
        except (ValueError, TypeError) as err:
            refused[name] = f"{type(err).__name__}: {err}"
    out["refused"] = refused
    return out


def explicit_and_auto_axes():
    """Gradients of the LM-head op and the risk for a batch placed on a mesh with Explicit axes
    (jax.make_mesh's default in recent jax) and with Auto axes: equal to one device's, and of
    the inputs' types and shardings. Under jax.set_mesh and under jit (with and without mesh=)."""
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((64, 6)).astype(np.float32)
    wn = (0.3 * rng.standard_normal((6, 16))).astype(np.float32)
    yn = rng.integers(0, 16, 64).astype(np.int32)
    yn[::7] = -100
    ref = jax.grad(lambda x, w: jsoftmax.linear_cross_entropy(x, w, yn), (0, 1))(xn, wn)
    ref_risk = jax.grad(lambda w, x: jsoftmax.risk(w, x, yn), (0, 1))(wn, xn)
    out = {}
    kinds = {"explicit": jax.sharding.AxisType.Explicit, "auto": jax.sharding.AxisType.Auto}
    for kind, axis_type in kinds.items():
        mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
        x = jax.device_put(xn, NamedSharding(mesh, P("data", None)))
        y = jax.device_put(yn, NamedSharding(mesh, P("data")))
        w = jax.device_put(wn, NamedSharding(mesh, P()))
        head = lambda x, w, **kw: jsoftmax.linear_cross_entropy(x, w, y, **kw)  # noqa: E731
        runs = {
            "set_mesh": lambda: jax.grad(head, (0, 1))(x, w),
            "set_mesh_mesh_arg": lambda: jax.grad(lambda x, w: head(x, w, mesh=mesh, data_axis="data"), (0, 1))(x, w),
            "jit": lambda: jax.jit(jax.grad(head, (0, 1)))(x, w),
            "jit_mesh_arg": lambda: jax.jit(jax.grad(lambda x, w: head(x, w, mesh=mesh, data_axis="data"), (0, 1)))(x, w),
            "risk": lambda: jax.jit(jax.grad(lambda w, x: jsoftmax.risk(w, x, y), (0, 1)))(w, x),
        }
        rows = {}
        for name, run in runs.items():
            try:
                with jax.set_mesh(mesh) if name.startswith("set_mesh") else contextlib.nullcontext():
                    got = run()
                want = ref_risk if name == "risk" else ref
                inputs = (w, x) if name == "risk" else (x, w)
                rows[name] = {"error": max(rel(g, r) for g, r in zip(got, want)),
                              "same_types": all(str(jax.typeof(g)) == str(jax.typeof(i)) for g, i in zip(got, inputs)),
                              "same_shardings": all(g.sharding.is_equivalent_to(i.sharding, i.ndim)
                                                    for g, i in zip(got, inputs))}
            except Exception as err:  # noqa: BLE001 - reported, judged by the test
                rows[name] = {"failed": f"{type(err).__name__}: {str(err)[:300]}"}
        out[kind] = rows
    return out


def main():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    result = {"n_devices": len(jax.devices())}
    with enable_x64():
        result["float64"] = accuracy(mesh, jnp.float64, soft=False)
        result["float64_soft"] = accuracy(mesh, jnp.float64, soft=True)
    result["float32"] = accuracy(mesh, jnp.float32, soft=False)
    result["collectives"] = collectives(mesh)
    result["memory"] = memory(mesh)
    result["relayout"] = relayout(mesh)
    result["bad_input"] = bad_input(mesh)
    with enable_x64():
        result["sparse"] = sparse_rows(mesh)
    result["axis_types"] = explicit_and_auto_axes()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
