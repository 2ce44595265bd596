"""One problem, checked from the command line: ``python -m benchmarks.studies.verify_time``.

Runs ``jsoftmax verify --problem 16x5x3`` (and, with ``--grad-fn``, a learner's NumPy gradient)
in fresh processes: three times with an empty program folder (``JSOFTMAX_CACHE_DIR`` a new
temporary folder each time: everything traced and compiled) and three times with the folder the
first run filled (the compiled programs loaded). Each child reports its wall time from the
start of the interpreter to its exit, measured by the parent, and its peak resident size
(``ru_maxrss``). The issue's targets: ≤ 3 s warm, ≤ 8 s cold. Writes
``benchmarks/results/verify-time-<platform>.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent
PEAK = "import resource, sys; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)"
CHILD = "import sys; from jsoftmax.cli import main; code = main({argv!r}); " + PEAK + "; sys.exit(code)"
LEARNER = """import numpy as np
def gradient(W, X, y):
    Z = X @ W
    P = np.exp(Z - Z.max(axis=1, keepdims=True)); P /= P.sum(axis=1, keepdims=True)
    return X.T @ (P - np.eye(W.shape[1])[y]) / len(X)
"""
RUNS = 3


def _child(argv: list[str], cache: str, cwd: str) -> dict:
    env = dict(os.environ, JSOFTMAX_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(argv=argv)], capture_output=True, text=True,
                          env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"jsoftmax {' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"seconds": seconds, "peak_bytes": int(done.stderr.strip().splitlines()[-1])}


def run() -> dict:
    variants = {"jsoftmax verify --problem 16x5x3": ["verify", "--problem", "16x5x3"],
                "jsoftmax verify --problem 16x5x3 --grad-fn learner:gradient":
                    ["verify", "--problem", "16x5x3", "--grad-fn", "learner:gradient"]}
    results = []
    with tempfile.TemporaryDirectory() as work:
        Path(work, "learner.py").write_text(LEARNER)
        for name, argv in variants.items():
            cold, warm = [], []
            for i in range(RUNS):
                cache = str(Path(work, f"cache-{len(results)}-{i}"))
                cold.append(_child(argv, cache, work))
                warm.append(_child(argv, cache, work))
            results.append({"command": name, "cold": cold, "warm": warm})
    return {"runs": RUNS, "results": results}


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        for kind in ("cold", "warm"):
            seconds = sorted(run["seconds"] for run in r[kind])
            peak = max(run["peak_bytes"] for run in r[kind]) / 2**20
            rows.append([f"`{r['command']}`", kind, f"{seconds[len(seconds) // 2]:.2f} s",
                         f"{seconds[0]:.2f}–{seconds[-1]:.2f}", f"{peak:.0f} MiB"])
    return ("## A fresh process per run: cold (an empty program folder) and warm (the folder the cold "
            f"run filled), {payload['runs']} runs each\n\n"
            + common.table(["command", "programs", "median", "min–max", "peak RSS"], rows))


def main(argv: list[str]) -> int:
    return common.report("verify-time", "One problem from the command line", "python -m benchmarks.studies.verify_time",
                         run(), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
