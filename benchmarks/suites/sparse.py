"""Sparse (text-shaped) fits against scikit-learn on the same CSR: ``python -m benchmarks.run --suite sparse``.

For each seeded problem of ``benchmarks/sparse_data.py`` (rcv1-shaped 100,000 × 50,000 with ~80
stored entries per row and K = 50; news20-shaped 11,314 × 130,000, ~150 per row, K = 20), in
fresh processes that load the same CSR from an ``.npz``:

- scikit-learn's ``LogisticRegression`` (lbfgs, C = 1, tol 1e-6, 1 BLAS thread);
- ``jsoftmax.SoftmaxRegression`` (C = 1, tol 1e-6, float64, each solver), fitted twice: the first
  fit compiles, the second shows the steady state.

Each process samples its resident memory every millisecond; "growth" is the peak minus the
resident size just before the fit, compared with the CSR's bytes plus the D × K float64
weights. Objectives are scikit-learn's C Σ ℓ + ½‖coef‖², computed the same way for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from pathlib import Path

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent

PROBLEMS = ("rcv1", "news20")
QUICK_PROBLEMS = ("small",)
SOLVERS = ("newton-cg", "lbfgs")

CHILD = """
import gc, json, threading, time, warnings
import numpy as np, scipy.sparse as sp
from benchmarks.suites.peak import rss_bytes
X = sp.load_npz({x!r}); y = np.load({y!r})
if {sklearn}:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    make = lambda: LogisticRegression(C=1.0, tol=1e-6, max_iter=1000)
    limit = threadpool_limits(1)
else:
    import jsoftmax
    make = lambda: jsoftmax.SoftmaxRegression(C=1.0, tol=1e-6, max_iter=1000, solver={solver!r},
                                              dtype="float64")

def measured(model):
    gc.collect()
    before = rss_bytes(); peak = [before]; running = [True]
    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss_bytes()); time.sleep(0.001)
    thread = threading.Thread(target=sample, daemon=True); thread.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter(); model.fit(X, y); seconds = time.perf_counter() - t
    running[0] = False; thread.join()
    return model, seconds, peak[0] - before

runs = [measured(make()) for _ in range(1 if {sklearn} else 2)]
device_peak = None
if not {sklearn}:
    import jax
    stats = jax.devices()[0].memory_stats() or {{}}
    device_peak = stats.get("peak_bytes_in_use")  # accelerators only; None on the CPU
fitted = runs[-1][0]
log_p = fitted.predict_log_proba(X)
ids = np.searchsorted(fitted.classes_, y)
objective = float(-log_p[np.arange(len(y)), ids].sum() + 0.5 * np.sum(fitted.coef_ ** 2))
n_iter = int(np.max(fitted.n_iter_))
converged = bool(getattr(fitted, "optimality_", {{}}).get("converged", n_iter < 1000))
print(json.dumps({{"fit_s": [r[1] for r in runs], "growth_bytes": [r[2] for r in runs],
                   "objective": objective, "n_iter": n_iter, "converged": converged,
                   "device": None if {sklearn} else str(jax.devices()[0].platform),
                   "device_peak_bytes": device_peak}}))
"""


def child(x_path: str, y_path: str, sklearn: bool, solver: str | None, timeout_s: float = 3600) -> dict:
    code = CHILD.format(x=x_path, y=y_path, sklearn=sklearn, solver=solver)
    env = dict(os.environ, JSOFTMAX_CACHE_DIR="off", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                          env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False, problems=None, solvers=SOLVERS, deadline: float | None = None,
        on_result=None) -> dict:
    """Every (problem, solver) pair; ``deadline`` (time.monotonic) skips what would start after
    it, and ``on_result(payload)`` sees the payload after each row (a lent GPU keeps what it got)."""
    import time

    import numpy as np
    import scipy.sparse as sp

    from ..sparse_data import SHAPES, make

    results = []
    payload = {"suite": "sparse", "results": results}

    def left() -> float:
        return 3600.0 if deadline is None else deadline - time.monotonic()

    def timed(label: str, *args):
        """``child(*args)`` within what is left, or None (and ``label`` listed as skipped)."""
        try:
            if left() >= 10:
                return child(*args, timeout_s=max(5.0, left()))
        except subprocess.TimeoutExpired:
            label += " (ran out of time)"
        payload.setdefault("skipped", []).append(label)
        return None

    for name in problems or (QUICK_PROBLEMS if quick else PROBLEMS):
        if left() < 10:
            payload.setdefault("skipped", []).append(name)
            continue
        X, y = make(name)
        n, d, _, k = SHAPES[name]
        shape = {"problem": name, "shape": [n, d, k], "nnz": int(X.nnz),
                 "csr_bytes": int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes),
                 "weights_bytes": int(d * k * 8)}
        with tempfile.TemporaryDirectory() as folder:
            x_path, y_path = os.path.join(folder, "X.npz"), os.path.join(folder, "y.npy")
            sp.save_npz(x_path, X, compressed=False)
            np.save(y_path, y)
            del X
            theirs = timed(f"{name} scikit-learn", x_path, y_path, True, None)
            if theirs is None:
                continue
            print(f"{name}: sklearn {theirs}", flush=True)
            for solver in solvers:
                ours = timed(f"{name} {solver}", x_path, y_path, False, solver)
                if ours is None:
                    continue
                print(f"{name}: jsoftmax {solver} {ours}", flush=True)
                results.append({**shape, "solver": solver, "ours": ours, "sklearn": theirs})
                if on_result is not None:
                    on_result(payload)
    return payload


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        ours, theirs = r["ours"], r["sklearn"]
        n, d, k = r["shape"]
        budget = r["csr_bytes"] + r["weights_bytes"]
        rows.append([
            f"{r['problem']} ({n}×{d}, K={k})", f"{r['nnz']:,}", f"{r['nnz'] / (n * d):.1e}",
            f"{r['csr_bytes'] / 2**20:.0f} MiB",
            r["solver"], f"{ours['fit_s'][1]:.2f} s ({ours['n_iter']} it)", f"{ours['fit_s'][0]:.2f} s",
            f"{theirs['fit_s'][0]:.2f} s ({theirs['n_iter']} it)",
            f"**{ours['fit_s'][1] / theirs['fit_s'][0]:.2f}×**",
            f"{ours['objective']:.6f} vs {theirs['objective']:.6f}",
            "yes" if ours["objective"] <= theirs["objective"] * (1 + 1e-9) else "no",
            f"{ours['growth_bytes'][1] / 2**20:.0f} MiB (**{ours['growth_bytes'][1] / budget:.2f}×**)",
            f"{ours['growth_bytes'][0] / 2**20:.0f} MiB",
            f"{theirs['growth_bytes'][0] / 2**20:.0f} MiB",
        ])
        peak = ours.get("device_peak_bytes")
        if peak:  # an accelerator: its allocator's peak over both fits
            rows[-1].append(f"{peak / 2**20:.0f} MiB (**{peak / budget:.2f}×**) on {ours['device']}")
    headers = ["problem", "stored", "density", "CSR", "solver", "jsoftmax (2nd fit)", "1st fit (compiles)",
               "sklearn lbfgs 1 thread", "ratio", "objective (ours vs sklearn)", "objective ≤",
               "memory growth, 2nd fit (/ CSR + W)", "1st fit", "sklearn"]
    if any(len(row) > len(headers) for row in rows):
        headers.append("device peak, both fits (/ CSR + W)")
    skipped = f"\nSkipped (out of time): {', '.join(payload['skipped'])}.\n" if payload.get("skipped") else ""
    return ("## Sparse fits vs scikit-learn on the same CSR (C = 1, tol 1e-6, float64)\n\n"
            + common.table(headers, rows) + skipped)
