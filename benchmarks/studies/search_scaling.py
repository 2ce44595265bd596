"""Search time against the number of models: ``python -m benchmarks.studies.search_scaling``.

N=20,000, D=64, K=10 (the fit suite's generator), 5 stratified folds, Cs ∈ {1, 2, 5, 10}
(5–50 models), tol 1e-6, float64: SoftmaxRegressionCV (second call, lean L-BFGS) and
scikit-learn's LogisticRegressionCV with one BLAS thread, the same Cs and folds. Writes
``benchmarks/results/search-scaling-<platform>.{json,md,png}``.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from .. import common
from ..suites.fit import synthetic


def main() -> int:
    import jsoftmax

    info = common.machine()
    X, y = synthetic(20_000, 64, 10)
    folds = list(StratifiedKFold(5).split(X, y))
    results = []
    for n_cs in (1, 2, 5, 10):
        Cs = np.logspace(-4, 4, n_cs) if n_cs > 1 else np.array([1.0])
        model = jsoftmax.SoftmaxRegressionCV(Cs=Cs, cv=folds, tol=1e-6, max_iter=1000)
        model.fit(X, y)
        start = time.perf_counter()
        model.fit(X, y)
        ours = time.perf_counter() - start
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            LogisticRegressionCV(Cs=Cs, cv=folds, tol=1e-6, max_iter=1000).fit(X, y)
            theirs = time.perf_counter() - start
        results.append({"models": n_cs * len(folds), "jsoftmax_s": ours, "sklearn_1thread_s": theirs})
        print(results[-1], flush=True)
    payload = {"machine": info, "command": "python -m benchmarks.studies.search_scaling", "results": results}
    rows = [[r["models"], f"{r['jsoftmax_s']:.2f} s", f"{r['sklearn_1thread_s']:.2f} s",
             f"{r['jsoftmax_s'] / r['sklearn_1thread_s']:.2f}×"] for r in results]
    md = ("# Search time vs number of models (20,000 × 64, K = 10, 5 folds, tol 1e-6, float64)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n"
          + common.table(["models (Cs × folds)", "SoftmaxRegressionCV", "LogisticRegressionCV, 1 thread",
                          "ratio"], rows)
          + "\n![time vs models](search-scaling-" + info["platform"] + ".png)\n")
    common.publish(f"search-scaling-{info['platform']}", payload, md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    models = [r["models"] for r in results]
    ax.plot(models, [r["jsoftmax_s"] for r in results], "o-", label="jsoftmax SoftmaxRegressionCV")
    ax.plot(models, [r["sklearn_1thread_s"] for r in results], "s--", label="scikit-learn, 1 thread")
    ax.set_xlabel("models fitted (Cs × folds)")
    ax.set_ylabel("seconds")
    ax.set_title(f"C × fold search, {info['platform']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"search-scaling-{info['platform']}.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
