"""The statsmodels case, scaled: ``python -m benchmarks.studies.many_classes [--quick]``.

N = 200,000 rows, D = 10 features, K = 10,000 classes, float64: the N×K matrix of scores or
probabilities that a dense implementation holds would be 16 GB. In a fresh process (its peak
resident size, ``ru_maxrss``, is the figure; the issue's target is below 1 GB) ``jsoftmax.fit``
runs L-BFGS for a fixed number of iterations (``tol=0``) from zero weights on a seeded problem
whose labels are the quantile bins of a planted projection of x (K balanced classes), and reports the time per iteration (the first, compiled,
fit excluded: a second fit is timed) and the objective. Writes
``benchmarks/results/many-classes-<platform>.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent
CHILD = r"""
import json, resource, sys, time
import numpy as np
import jax.numpy as jnp
import jsoftmax
from jsoftmax._compat import enable_x64
n, d, k, iterations = {n}, {d}, {k}, {iterations}
rng = np.random.default_rng(0)
X = rng.standard_normal((n, d))
# A planted structure: the class is the quantile bin of a projection of x (K balanced classes).
projection = X @ rng.standard_normal(d)
y = np.searchsorted(np.quantile(projection, np.linspace(0, 1, k + 1)[1:-1]), projection)
with enable_x64():
    start = jsoftmax.Params(np.zeros((d, k)), np.zeros(k))
    fit = lambda: jsoftmax.fit(start, X, y, solver="lbfgs", l2=1.0 / n, tol=0.0, max_iter=iterations)
    fit()
    begin = time.perf_counter()
    result = fit()
    seconds = time.perf_counter() - begin
print(json.dumps({{"seconds": seconds, "n_iter": int(result.n_iter), "objective": float(result.history["loss"][-1]),
                  "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def run(quick: bool) -> dict:
    n, d, k, iterations = (20_000, 10, 1_000, 3) if quick else (200_000, 10, 10_000, 10)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JSOFTMAX_CACHE_DIR="off")
    done = subprocess.run([sys.executable, "-c", CHILD.format(n=n, d=d, k=k, iterations=iterations)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"shape": [n, d, k], "iterations": iterations, **result}


def markdown(payload: dict) -> str:
    n, d, k = payload["shape"]
    dense = n * k * 8 / 2**30
    rows = [[f"{n:,}×{d}, K={k:,}", f"{dense:.1f} GiB", payload["n_iter"],
             f"{payload['seconds'] / max(payload['n_iter'], 1):.2f} s", f"{payload['objective']:.6f}",
             f"{payload['peak_bytes'] / 2**20:.0f} MiB"]]
    return ("## L-BFGS, float64, a fixed number of iterations; peak resident size of the whole process\n\n"
            + common.table(["problem", "an N×K float64 array", "iterations", "per iteration", "objective",
                            "peak RSS"], rows))


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    return common.report("many-classes" + ("-quick" if quick else ""), "Many classes: N×K never held",
                         "python -m benchmarks.studies.many_classes" + (" --quick" if quick else ""),
                         run(quick), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
