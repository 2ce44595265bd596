"""Peak memory of a fit beyond X itself, in a fresh process: ``python -m benchmarks.fit_memory``.

X is 200,000 × 512 float32 (391 MiB), K = 100; ``SoftmaxRegression(dtype="float32",
standardize=True, max_iter=10)`` is fitted once (compilation included). A sampling thread reads
VmRSS every millisecond; the figure is the peak minus the resident size just before ``fit``,
divided by X's bytes. Writes ``benchmarks/results/fit-memory-<platform>.{json,md}``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from . import common

CHILD = """
import json, threading, time
import numpy as np
from benchmarks.peak import rss_bytes
n, d, k, dtype = {n}, {d}, {k}, "{dtype}"
rng = np.random.default_rng(0)
X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
y = rng.integers(0, k, n)
import jsoftmax
model = jsoftmax.SoftmaxRegression(dtype=dtype, standardize=True, max_iter=10, tol=0.0)
before = rss_bytes(); peak = [before]; running = [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss_bytes()); time.sleep(0.001)
thread = threading.Thread(target=sample, daemon=True); thread.start()
t = time.perf_counter(); model.fit(X, y); seconds = time.perf_counter() - t
running[0] = False; thread.join()
print(json.dumps({{"x_bytes": X.nbytes, "growth_bytes": peak[0] - before, "fit_s": seconds}}))
"""


def main() -> int:
    info = common.machine()
    rows, results = [], []
    for dtype in ("float32", "float64"):
        code = CHILD.format(n=200_000, d=512, k=100, dtype=dtype)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=1800, env={"JSOFTMAX_CACHE_DIR": "off", **__import__("os").environ})
        out = json.loads(done.stdout.strip().splitlines()[-1])
        out["dtype"] = dtype
        results.append(out)
        rows.append([dtype, f"{out['x_bytes'] / 2**20:.0f} MiB", f"{out['growth_bytes'] / 2**20:.0f} MiB",
                     f"**{out['growth_bytes'] / out['x_bytes']:.2f}×**", f"{out['fit_s']:.1f} s"])
        print(rows[-1], flush=True)
    payload = {"machine": info, "command": "python -m benchmarks.fit_memory", "results": results}
    md = ("# Peak memory of a fit beyond X (200,000 × 512, K = 100, standardize, 10 iterations)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n"
          + common.table(["dtype", "X", "peak RSS growth during fit", "growth / X", "fit time"], rows))
    common.publish(f"fit-memory-{info['platform']}", payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
