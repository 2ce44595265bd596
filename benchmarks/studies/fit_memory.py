"""Peak memory of a fit and of a search beyond X itself, each in a fresh process:
``python -m benchmarks.studies.fit_memory``.

X is 200,000 × 512 (391 MiB in float32), K = 100. The estimator is
``SoftmaxRegression(dtype, standardize=True, max_iter=10, tol=0)``; the search is
``SoftmaxRegressionCV(Cs=[0.1, 1], cv=5, standardize=True, max_iter=5, tol=0)`` (ten models,
five at a time, then the refit). A sampling thread reads VmRSS every half millisecond; the
figure is the peak minus the resident size just before ``fit``, divided by X's bytes.

Each case runs with X read in place (the default) and, in the same run, copied to the device
as before (``jsoftmax._inplace.MIN_BYTES`` raised past X's size); with JAX's persistent
compilation cache off (cold: the compiler's own memory counts) and warm (a first process of the
same case filled a fresh cache directory). The same fit at N = 2,000 shows what does not grow
with X (the JAX runtime and the compiler). Writes ``benchmarks/results/fit-memory-<platform>.{json,md}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from .. import common

CHILD = """
import json, threading, time
import numpy as np
from benchmarks.suites.peak import rss_bytes
n, d, k, dtype = {n}, {d}, {k}, "{dtype}"
rng = np.random.default_rng(0)
X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
y = rng.integers(0, k, n)
import jsoftmax
from jsoftmax import _inplace
if not {in_place}:
    _inplace.MIN_BYTES = 2**62
if "{what}" == "search":
    model = jsoftmax.SoftmaxRegressionCV(Cs=[0.1, 1.0], cv=5, dtype=dtype, standardize=True, max_iter=5,
                                         tol=0.0)
else:
    model = jsoftmax.SoftmaxRegression(dtype=dtype, standardize=True, max_iter=10, tol=0.0)
before = rss_bytes(); peak = [before]; running = [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss_bytes()); time.sleep(0.0005)
thread = threading.Thread(target=sample, daemon=True); thread.start()
t = time.perf_counter(); model.fit(X, y); seconds = time.perf_counter() - t
running[0] = False; thread.join()
print(json.dumps({{"x_bytes": X.nbytes, "growth_bytes": peak[0] - before, "fit_s": seconds}}))
"""

N, D, K = 200_000, 512, 100
CASES = [  # (what, dtype, cache, in place, rows)
    ("estimator", "float32", "cold", True, N),
    ("estimator", "float32", "cold", False, N),
    ("estimator", "float32", "warm", True, N),
    ("estimator", "float64", "cold", True, N),
    ("estimator", "float64", "cold", False, N),
    ("search", "float32", "cold", True, N),
    ("search", "float32", "cold", False, N),
    ("search", "float32", "warm", True, N),
    ("estimator", "float32", "cold", True, 2_000),
    ("search", "float32", "cold", True, 2_000),
]


def run_child(what: str, dtype: str, in_place: bool, n: int, cache_dir: str) -> dict:
    code = CHILD.format(n=n, d=D, k=K, dtype=dtype, what=what, in_place=in_place)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=1800, env={**os.environ, "JSOFTMAX_CACHE_DIR": cache_dir})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    rows, results = [], []
    for what, dtype, cache, in_place, n in CASES:
        with tempfile.TemporaryDirectory() as cache_dir:
            if cache == "warm":  # a first process of the same case fills the cache
                run_child(what, dtype, in_place, n, cache_dir)
            out = run_child(what, dtype, in_place, n, cache_dir if cache == "warm" else "off")
        out.update(what=what, dtype=dtype, cache=cache, in_place=in_place, n=n)
        results.append(out)
        rows.append(render_row(out))
        print(rows[-1], flush=True)
    return common.report(
        "fit-memory", "Peak memory of a fit and a search beyond X (K = 100, standardize)",
        "python -m benchmarks.studies.fit_memory", {"results": results},
        lambda payload: NOTE + common.table(HEADERS, [render_row(r) for r in payload["results"]]))


HEADERS = ["fit", "X", "dtype", "cache", "X read", "X bytes", "peak growth", "growth / X", "fit time"]
NOTE = ("Estimator: `SoftmaxRegression(max_iter=10, tol=0)`; search: `SoftmaxRegressionCV(Cs=[0.1, 1], "
        "cv=5, max_iter=5, tol=0)` with its refit. Growth: peak resident memory during `fit` minus the "
        "resident memory before it. \"copied\": X placed on the device by a copy, as before X was read "
        "in place (`jsoftmax._inplace`). Cache: JAX's persistent compilation cache off (cold) or filled "
        "by an earlier process (warm). The N = 2,000 rows are what does not grow with X: the JAX "
        "runtime and the compiled programs.\n\n")


def render_row(out: dict) -> list[str]:
    x_mib = out["x_bytes"] / 2**20
    return [out["what"], f"{out['n']:,} × {D}", out["dtype"], out["cache"],
            "in place" if out["in_place"] else "copied",
            f"{x_mib:.0f} MiB" if x_mib >= 1 else f"{out['x_bytes'] / 2**10:.0f} KiB",
            f"{out['growth_bytes'] / 2**20:.0f} MiB",
            f"**{out['growth_bytes'] / out['x_bytes']:.2f}×**" if out["n"] == N else "—",
            f"{out['fit_s']:.1f} s"]


if __name__ == "__main__":
    sys.exit(main())
