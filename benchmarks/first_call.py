"""The call a user makes: the first fit in a fresh process, with a cold and a warm compilation cache.

    python -m benchmarks.first_call [--new-n]

Runs ``SoftmaxRegression(standardize=True, tol=1e-6).fit`` on digits in three fresh processes
sharing an empty temporary ``JSOFTMAX_CACHE_DIR`` (the first compiles and fills it, the next two
load from it) and scikit-learn's ``LogisticRegression`` (1 BLAS thread) on the same data, and
writes ``benchmarks/results/first-call-<platform>.{json,md}``.

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

from . import common

CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
X, y = load_digits(return_X_y=True)
if {sklearn}:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    Xs = StandardScaler().fit_transform(X)
    with threadpool_limits(1):
        t = time.perf_counter(); LogisticRegression(tol=1e-6, max_iter=10_000).fit(Xs, y)
        fit = time.perf_counter() - t
    print(json.dumps({{"fit_s": fit, "import_s": t - t0}}))
else:
    import jsoftmax
    t1 = time.perf_counter()
    model = jsoftmax.SoftmaxRegression(standardize=True, tol=1e-6, max_iter=1000)
    t = time.perf_counter(); model.fit(X, y); fit = time.perf_counter() - t
    t = time.perf_counter(); model.fit(X, y); again = time.perf_counter() - t
    print(json.dumps({{"fit_s": fit, "second_fit_s": again, "import_s": t1 - t0,
                       "converged": model.optimality_["converged"]}}))
"""


NEW_N_CHILD = """
import json, time
import numpy as np
from sklearn.datasets import load_digits
import jsoftmax
from jsoftmax import _estimator
if not {buckets}:
    _estimator.ROW_BUCKET_MAX_BYTES = 0
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
    payload = {"machine": info, "command": "python -m benchmarks.first_call --new-n", **runs}
    rows = [[name.replace("_", " "), *(f"{t:.2f} s" for t in run["fit_s"])] for name, run in runs.items()]
    md = ("# Fits on a new number of rows (digits, standardize, tol 1e-6, float64, cache off)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n"
          + common.table(["row buckets", "fit 1438 rows (compiles)", "then 1437 rows", "1438 again",
                          "1436 rows"], rows))
    common.publish(f"new-n-{info['platform']}", payload, md)
    return 0


def child(sklearn: bool, cache: str) -> dict:
    env = dict(os.environ, JSOFTMAX_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", CHILD.format(sklearn=sklearn)], env=env,
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    info = common.machine()
    with tempfile.TemporaryDirectory() as folder:
        cache = os.path.join(folder, "cache")
        runs = [child(False, cache) for _ in range(3)]
    sk = child(True, "off")
    payload = {"machine": info, "command": "python -m benchmarks.first_call", "cold": runs[0],
               "warm": runs[1:], "sklearn_1thread": sk}
    rows = [["jsoftmax, cold cache", f"{runs[0]['import_s']:.2f} s", f"{runs[0]['fit_s']:.2f} s",
             f"{runs[0]['fit_s'] / sk['fit_s']:.1f}×", f"{runs[0]['second_fit_s'] * 1e3:.0f} ms"]]
    for i, run in enumerate(runs[1:], 1):
        rows.append([f"jsoftmax, warm cache ({i})", f"{run['import_s']:.2f} s", f"{run['fit_s']:.2f} s",
                     f"{run['fit_s'] / sk['fit_s']:.1f}×", f"{run['second_fit_s'] * 1e3:.0f} ms"])
    rows.append(["scikit-learn lbfgs, 1 thread", f"{sk['import_s']:.2f} s", f"{sk['fit_s'] * 1e3:.0f} ms", "1.0×", ""])
    md = ("# First fit in a fresh process (digits, standardize, tol 1e-6, float64)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n"
          + common.table(["process", "import", "first fit", "vs scikit-learn", "second fit"], rows))
    common.publish(f"first-call-{info['platform']}", payload, md)
    return 0


if __name__ == "__main__":
    sys.exit(main_new_n() if "--new-n" in sys.argv[1:] else main())
