"""The call a user makes: the first fit in a fresh process, with a cold and a warm compilation cache.

    python -m benchmarks.studies.first_call [--new-n] [--quick]

For each problem (digits, and the fit suite's synthetic 50,000 × 128, K = 20 and 100,000 × 256,
K = 50), runs ``SoftmaxRegression(standardize=True, tol=1e-6).fit`` in three fresh processes
sharing an empty temporary ``JSOFTMAX_CACHE_DIR`` (the first compiles and fills it, the next two
load from it) and scikit-learn's ``LogisticRegression`` (1 BLAS thread) on the same data, and
writes ``benchmarks/results/first-call-<platform>.{json,md}``. The data are made before the
clock starts; import time is reported apart.

``--new-n``: the fit that follows a fit on a different number of rows (as in 5-fold cross
validation of digits: 1438 then 1437 rows), with the estimator's row buckets and without
(``ROW_BUCKET_MAX_BYTES = 0``), each in a fresh process with the compilation cache off;
writes ``benchmarks/results/new-n-<platform>.{json,md}``.
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

CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
from sklearn.preprocessing import StandardScaler
problem = {problem!r}
t1 = time.perf_counter()
if not {sklearn}:
    import jsoftmax  # timed alone: the synthetic problems' module imports it too
t2 = time.perf_counter()
if problem == "digits":
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
else:
    from benchmarks.suites.fit import synthetic
    X, y = synthetic(*map(int, problem.split("x")))
if {sklearn}:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    t = time.perf_counter()
    with threadpool_limits(1):
        Xs = StandardScaler().fit_transform(X)
        LogisticRegression(tol=1e-6, max_iter=10_000).fit(Xs, y)
    fit = time.perf_counter() - t
    print(json.dumps({{"fit_s": fit}}))
else:
    model = jsoftmax.SoftmaxRegression(standardize=True, tol=1e-6, max_iter=1000)
    t = time.perf_counter(); model.fit(X, y); fit = time.perf_counter() - t
    t = time.perf_counter(); model.fit(X, y); again = time.perf_counter() - t
    print(json.dumps({{"fit_s": fit, "second_fit_s": again, "import_s": t2 - t1,
                       "converged": model.optimality_["converged"]}}))
"""
PROBLEMS = {"digits": "digits (1797×64, K=10)", "50000x128x20": "synthetic (50000×128, K=20)",
            "100000x256x50": "synthetic (100000×256, K=50)"}


NEW_N_CHILD = """
import json, time
import numpy as np
from sklearn.datasets import load_digits
import jsoftmax
from jsoftmax.sklearn import common
if not {buckets}:
    common.ROW_BUCKET_MAX_BYTES = 0
X, y = load_digits(return_X_y=True)
times = []
for n in (1438, 1437, 1438, 1436):
    t = time.perf_counter()
    jsoftmax.SoftmaxRegression(standardize=True, tol=1e-6, max_iter=1000).fit(X[:n], y[:n])
    times.append(time.perf_counter() - t)
print(json.dumps({{"fit_s": times, "rows": [1438, 1437, 1438, 1436]}}))
"""


def new_n(buckets: bool) -> dict:
    env = dict(os.environ, JSOFTMAX_CACHE_DIR="off")
    done = subprocess.run([sys.executable, "-c", NEW_N_CHILD.format(buckets=buckets)], env=env,
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_new_n() -> int:
    info = common.machine()
    runs = {"buckets": new_n(True), "no_buckets": new_n(False)}
    payload = {"machine": info, "command": "python -m benchmarks.studies.first_call --new-n", **runs}
    rows = [[name.replace("_", " "), *(f"{t:.2f} s" for t in run["fit_s"])] for name, run in runs.items()]
    md = ("# Fits on a new number of rows (digits, standardize, tol 1e-6, float64, cache off)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n"
          + common.table(["row buckets", "fit 1438 rows (compiles)", "then 1437 rows", "1438 again",
                          "1436 rows"], rows))
    common.publish(f"new-n-{info['platform']}", payload, md)
    return 0


def child(problem: str, sklearn: bool, cache: str) -> dict:
    env = dict(os.environ, JSOFTMAX_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD.format(problem=problem, sklearn=sklearn)], env=env,
                          capture_output=True, text=True, check=True, timeout=900, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> int:
    info = common.machine()
    results, rows = {}, []
    for problem, label in list(PROBLEMS.items())[:1 if quick else None]:
        with tempfile.TemporaryDirectory() as folder:
            cache = os.path.join(folder, "cache")
            runs = [child(problem, False, cache) for _ in range(3)]
        sk = child(problem, True, "off")
        results[problem] = {"cold": runs[0], "warm": runs[1:], "sklearn_1thread": sk}
        for name, run in zip(("cold cache", "warm cache (1)", "warm cache (2)"), runs):
            rows.append([label, f"jsoftmax, {name}", f"{run['import_s']:.2f} s", f"{run['fit_s']:.2f} s",
                         f"**{run['fit_s'] / sk['fit_s']:.2f}×**", f"{run['second_fit_s']:.2f} s"])
        rows.append([label, "scikit-learn lbfgs, 1 thread (with its scaling)", "", f"{sk['fit_s']:.2f} s", "1.00×", ""])
    command = "python -m benchmarks.studies.first_call" + (" --quick" if quick else "")
    payload = {"machine": info, "command": command, "problems": results}
    md = ("# First fit in a fresh process (standardize, tol 1e-6, float64)\n\n"
          + common.stamp_markdown(info, command) + "\n"
          + common.table(["problem", "process", "import jsoftmax", "first fit", "vs scikit-learn", "second fit"], rows))
    if quick:
        print(md)
    else:
        common.publish(f"first-call-{info['platform']}", payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main_new_n() if "--new-n" in sys.argv[1:] else main(quick="--quick" in sys.argv[1:]))
