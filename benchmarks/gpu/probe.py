"""The linear-probe part of the GPU kit: ``python -m benchmarks.gpu --parts probe``.

Synthetic features with a planted linear model (labels drawn from its softmax, so accuracy
means something) at the shapes of cyanure's GPU probes — ``imnet`` (DINO features, 1,281,167 ×
2048, K = 1000) and ``places`` (2,448,873 × 2048, K = 205) — generated on the device, stored in
float32 and in bfloat16, with a held-out tenth for validation. For each:

* one fit, ``jsoftmax.fit`` with L-BFGS to scikit-learn's default tolerance (1e-4) at C = 1
  (``l2 = 1/(C·N)``): time, device peak, objective, validation accuracy;
* CLIP's protocol: a search over 8 values of C on the held-out split, all 8 models in one
  compiled program (``jsoftmax.fit_many``), then the refit at the best C warm-started from it;
* the floor beside the fit: the two products per iteration (XW and XᵀdZ, 2·N·D·K multiply-adds
  each) at the card's dense rate for the stored dtype;
* scikit-learn's ``LogisticRegression(lbfgs)`` on the host's cores with a time cap, on the
  float32 features: the objective it reached (warm-started in steps of 5 iterations until the
  cap), against ours;
* the out-of-device path: the same problem (regenerated with the same seed, in blocks, into
  host memory) fitted by a child process whose device memory is capped
  (``XLA_PYTHON_CLIENT_MEM_FRACTION``) so that X is ``OFFLOAD_RATIO`` times what the fit may
  use, with ``feature_memory="auto"`` (which must choose host memory there): its time per
  iteration against the in-device fit's, its device peak, and the PCIe floor beside it (X's
  bytes per iteration over the host link). On a CPU (the dry run) the child forces
  ``feature_memory="host"``, the same streaming code.

``--dry-run`` runs the same code at small shapes on any machine (the CI runs it on the CPU).
"""

from __future__ import annotations

import json
import time
from functools import partial

import numpy as np

# X over what the capped child may use, and the host link's rate per direction (PCIe Gen5 x16,
# H100/H200 SXM), in bytes/s.
OFFLOAD_RATIO = 2.5
PCIE_RATE = 64e9
SHAPES = {"imnet": (1_281_167, 2048, 1000), "places": (2_448_873, 2048, 205)}
QUICK_SHAPES = {"imnet": (6_000, 32, 20), "places": (8_000, 32, 8)}
CS = np.logspace(-3, 2, 8)
# Dense rates of the cards the kit runs on (NVIDIA's datasheets, SXM, dense): float32 (TF32
# off: jsoftmax multiplies float32 at full precision) and bfloat16 tensor cores, in FLOP/s.
RATES = {"H100": {"float32": 67e12, "bfloat16": 989e12}, "H200": {"float32": 67e12, "bfloat16": 989e12}}


def _card() -> str | None:
    import jax

    kind = jax.devices()[0].device_kind
    return next((name for name in RATES if name in kind), None)


def _peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def planted(n: int, d: int, k: int, dtype, seed: int = 0, on_host: bool = False):
    """(X, y, X_val, y_val): X standard normal in ``dtype``, labels drawn from the softmax of a
    planted model's scores, both made on the device in blocks of rows (so no N×K array exists);
    on the device, or with ``on_host`` copied block by block into host (NumPy) arrays, so that
    the device never holds X. The same seed gives the same values either way."""
    import jax
    import jax.numpy as jnp

    key_x, key_w, key_g = jax.random.split(jax.random.PRNGKey(seed), 3)
    W = jax.random.normal(key_w, (d, k), jnp.float32) * (3.0 / np.sqrt(d))

    @partial(jax.jit, static_argnums=1)
    def block_of(i, size):
        block = jax.random.normal(jax.random.fold_in(key_x, i), (size, d), jnp.float32).astype(dtype)
        scores = block.astype(jnp.float32) @ W
        noise = jax.random.gumbel(jax.random.fold_in(key_g, i), scores.shape)
        return block, jnp.argmax(scores + noise, axis=1).astype(jnp.int32)

    rows = max(1, min(n, 2**26 // max(k, d, 1)))
    blocks = [block_of(i, min(rows, n - start)) for i, start in enumerate(range(0, n, rows))]
    if on_host:
        X = np.empty((n, d), jnp.dtype(dtype))
        y = np.empty(n, np.int32)
        for (xb, yb), start in zip(blocks, range(0, n, rows)):
            X[start:start + xb.shape[0]], y[start:start + yb.shape[0]] = np.asarray(xb), np.asarray(yb)
            del xb, yb
    else:
        X, y = jnp.concatenate([b[0] for b in blocks]), jnp.concatenate([b[1] for b in blocks])
    del blocks
    held = n // 10
    return X[held:], y[held:], X[:held], y[:held]


OFFLOAD_CHILD = r"""
import json, sys, time
import numpy as np
import jax, jax.numpy as jnp
import jsoftmax
from jsoftmax import _host
from benchmarks.gpu.probe import planted, _peak_bytes
n, d, k, dtype_name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dtype = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
X, y, _, _ = planted(n, d, k, dtype, on_host=True)
gpu = jax.devices()[0].platform != "cpu"
memory = "auto" if gpu else "host"
extra = _host.working_bytes(d, k, 1024, X.dtype.itemsize)
chose_host = _host.keeps_on_host(memory, X, extra)
l2 = 1.0 / X.shape[0]
start = jsoftmax.Params(jnp.zeros((d, k), jnp.float32), jnp.zeros(k, jnp.float32))
begin = time.perf_counter()
fitted = jsoftmax.fit(start, X, y, solver="lbfgs", l2=l2, tol=1e-4, max_iter=1000, feature_memory=memory)
jax.block_until_ready(fitted.params)
seconds = time.perf_counter() - begin
print(json.dumps({"fit_s": seconds, "n_iter": int(fitted.n_iter), "stop_reason": fitted.stop_reason,
                  "feature_memory": memory, "chose_host": bool(chose_host), "free_bytes": _host.free_device_bytes(),
                  "device_peak_bytes": _peak_bytes(), "loss": float(fitted.history["loss"][-1])}))
"""


def out_of_device(n: int, d: int, k: int, dtype_name: str, x_bytes: int, timeout_s: float) -> dict:
    """The fit from host memory in a child whose device memory is capped (see the module doc)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import jax

    root = Path(__file__).resolve().parent.parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), JSOFTMAX_CACHE_DIR="off")
    stats = jax.devices()[0].memory_stats() or {}
    fraction = None
    if "bytes_limit" in stats:  # the pool is 75% of the card by default: the card's bytes from it
        total = stats["bytes_limit"] / float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", 0.75))
        fraction = x_bytes / OFFLOAD_RATIO / total
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        done = subprocess.run([sys.executable, "-c", OFFLOAD_CHILD, str(n), str(d), str(k), dtype_name],
                              capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "mem_fraction": fraction}
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "mem_fraction": fraction}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "mem_fraction": fraction}


def _as_stored(params, X):
    """The parameters in X's dtype: a 16-bit X is evaluated as the fit's products read it."""
    import jax

    return jax.tree_util.tree_map(lambda a: a.astype(X.dtype), params)


def _accuracy(params, X, y) -> float:
    import jsoftmax

    return float(np.mean(np.asarray(jsoftmax.predict(_as_stored(params, X), X)) == np.asarray(y)))


def _objective(params, X, y, l2) -> float:
    import jsoftmax

    return float(jsoftmax.risk(_as_stored(params, X), X, y, l2=l2, check_values=False))


def _sklearn_capped(X: np.ndarray, y: np.ndarray, C: float, cap_s: float) -> dict:
    """scikit-learn's lbfgs, warm-started 5 iterations at a time until ``cap_s``: the objective
    (scaled as ours: mean loss + l2/2·‖W‖², l2 = 1/(C·N)) after each step."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=5, warm_start=True)
    start, steps, converged = time.perf_counter(), [], False
    n = len(y)
    while time.perf_counter() - start < cap_s:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X, y)
        log_p = model.predict_log_proba(X)
        mean_loss = -float(np.mean(log_p[np.arange(n), np.searchsorted(model.classes_, y)]))
        objective = mean_loss + 0.5 / (C * n) * float(np.sum(model.coef_.astype(np.float64) ** 2))
        steps.append({"seconds": time.perf_counter() - start, "objective": objective})
        if not any(issubclass(w.category, ConvergenceWarning) for w in caught):
            converged = True
            break
    return {"cap_s": cap_s, "converged": converged, "steps": steps,
            "objective": steps[-1]["objective"] if steps else None,
            "seconds": steps[-1]["seconds"] if steps else None}


def run(quick: bool, deadline: float | None = None, on_result=None) -> dict:
    import jax
    import jax.numpy as jnp

    import jsoftmax

    shapes = QUICK_SHAPES if quick else SHAPES
    card = _card()
    results, skipped = [], []
    for name, (n, d, k) in shapes.items():
        for dtype_name in ("float32", "bfloat16"):
            if deadline is not None and time.monotonic() > deadline:
                skipped.append(f"{name} {dtype_name}")
                continue
            dtype = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
            X, y, X_val, y_val = planted(n, d, k, dtype)
            jax.block_until_ready((X, y))
            n_train = X.shape[0]
            l2 = 1.0 / n_train  # C = 1
            start = jsoftmax.Params(jnp.zeros((d, k), jnp.float32), jnp.zeros(k, jnp.float32))
            begin = time.perf_counter()
            fitted = jsoftmax.fit(start, X, y, solver="lbfgs", l2=l2, tol=1e-4, max_iter=1000)
            jax.block_until_ready(fitted.params)
            fit_s = time.perf_counter() - begin
            row = {"problem": name, "shape": [n_train, d, k], "dtype": dtype_name,
                   "x_bytes": int(X.size * X.dtype.itemsize), "fit_s": fit_s, "n_iter": int(fitted.n_iter),
                   "stop_reason": fitted.stop_reason, "device_peak_bytes": _peak_bytes(),
                   "objective": _objective(fitted.params, X, y, l2),
                   "val_accuracy": _accuracy(fitted.params, X_val, y_val)}
            flops = 2 * 2 * n_train * d * k * max(int(fitted.n_iter), 1)  # two products per iteration
            if card is not None:
                row["floor_s"] = flops / RATES[card][dtype_name]
            # CLIP's protocol: the Cs on the held-out split, as one program, then the refit.
            begin = time.perf_counter()
            W0 = np.zeros((len(CS), d, k), np.float32)
            search = jsoftmax.fit_many(jsoftmax.Params(W0, np.zeros((len(CS), k), np.float32)), X, y,
                                       sample_weights=np.ones((len(CS), n_train), np.float32),
                                       l2=np.asarray(1.0 / (CS * n_train), np.float32), tol=1e-4, max_iter=1000)
            accuracies = [_accuracy(jsoftmax.Params(search.params.W[i], search.params.b[i]), X_val, y_val)
                          for i in range(len(CS))]
            best = int(np.argmax(accuracies))
            refit = jsoftmax.fit(jsoftmax.Params(search.params.W[best], search.params.b[best]), X, y, solver="lbfgs",
                                 l2=float(1.0 / (CS[best] * n_train)), tol=1e-4, max_iter=1000)
            jax.block_until_ready(refit.params)
            row["search"] = {"seconds": time.perf_counter() - begin, "Cs": CS.tolist(), "val_accuracy": accuracies,
                             "best_C": float(CS[best]), "refit_val_accuracy": _accuracy(refit.params, X_val, y_val),
                             "device_peak_bytes": _peak_bytes()}
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is None or remaining > 60:
                row["offload"] = out_of_device(n, d, k, dtype_name, row["x_bytes"],
                                               600.0 if remaining is None else remaining - 30)
                if "n_iter" in row["offload"]:
                    row["offload"]["floor_s"] = row["x_bytes"] * row["offload"]["n_iter"] / PCIE_RATE
            if dtype_name == "float32":
                cap = 20.0 if quick else 300.0
                host = _sklearn_capped(np.asarray(X), np.asarray(y), 1.0, cap)
                row["sklearn"] = host
            results.append(row)
            if on_result is not None:
                on_result({"card": card, "results": results, "skipped": skipped})
            del X, y, X_val, y_val
    return {"card": card, "results": results, "skipped": skipped}


def markdown(payload: dict) -> str:
    from .. import common

    rows = []
    for r in payload.get("results", []):
        n, d, k = r["shape"]
        peak = r.get("device_peak_bytes")
        host = r.get("sklearn")
        host_cell = ""
        if host and host.get("objective") is not None:
            host_cell = (f"{host['objective']:.5f} after {host['seconds']:.0f} s"
                         + ("" if host["converged"] else f" (capped at {host['cap_s']:.0f} s)"))
        rows.append([r["problem"], f"{n:,}×{d}, K={k}", r["dtype"], f"{r['x_bytes'] / 2**30:.2f} GiB",
                     f"{r['fit_s']:.2f} s", f"{r['floor_s']:.2f} s" if "floor_s" in r else "",
                     f"{r['n_iter']} ({r['stop_reason']})", "" if peak is None else f"{peak / 2**30:.2f} GiB",
                     f"{r['objective']:.5f}", f"{r['val_accuracy']:.4f}",
                     f"{r['search']['seconds']:.1f} s", f"{r['search']['best_C']:g}",
                     f"{r['search']['refit_val_accuracy']:.4f}", host_cell])
    offload_rows = []
    for r in payload.get("results", []):
        o = r.get("offload")
        if not o:
            continue
        if "error" in o:
            offload_rows.append([r["problem"], r["dtype"], "", "", "", "", "", "", o["error"].splitlines()[-1][:120]])
            continue
        per_iteration = o["fit_s"] / max(o["n_iter"], 1)
        in_device = r["fit_s"] / max(r["n_iter"], 1)
        peak = o.get("device_peak_bytes")
        fraction = o.get("mem_fraction")
        offload_rows.append([
            r["problem"], r["dtype"], "" if fraction is None else f"{fraction:.3f}",
            f"{o['feature_memory']} → {'host' if o['chose_host'] else 'device'}",
            f"{o['fit_s']:.2f} s ({o['n_iter']} it, {o['stop_reason']})", f"{per_iteration:.3f} s",
            f"{per_iteration / in_device:.2f}×", f"{o['floor_s'] / max(o['n_iter'], 1):.3f} s",
            "" if peak is None else f"{peak / 2**30:.2f} GiB"])
    text = ("## Linear probes: one fit at tol 1e-4 (C = 1), CLIP's C search (8 Cs as one program, then "
            "the refit), scikit-learn capped\n\n"
            f"Card: {payload.get('card') or 'not a card with a listed rate (no floor)'}; the floor is the "
            "two products per iteration at its dense rate for the stored dtype.\n\n"
            + common.table(["problem", "shape (train)", "X stored", "X", "fit", "floor", "iterations", "device peak",
                            "objective", "val acc", "search + refit", "best C", "refit val acc",
                            "scikit-learn objective"], rows))
    if offload_rows:
        text += ("\n### X in host memory: the device capped so that X is "
                 f"{OFFLOAD_RATIO:g}× what the fit may use\n\n"
                 + common.table(["problem", "X stored", "memory fraction", "feature_memory", "fit",
                                 "per iteration", "vs in-device per iteration", "PCIe floor per iteration",
                                 "device peak"], offload_rows)
                 + f"\nThe PCIe floor: X's bytes once per iteration at {PCIE_RATE / 1e9:.0f} GB/s. "
                 "On a CPU (the dry run) there is no cap and the child forces feature_memory='host'.\n")
    if payload.get("skipped"):
        text += f"\nSkipped (out of time): {', '.join(payload['skipped'])}.\n"
    return text
