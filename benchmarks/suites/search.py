"""A whole C × fold search: SoftmaxRegressionCV against scikit-learn's LogisticRegressionCV.

N=50,000, D=128, K=20 (the fit suite's generator), 10 Cs × 5 stratified folds, tol 1e-6, the
same Cs and folds for both; scikit-learn with 1 BLAS thread and with its default threads.
jsoftmax's first call (compilation included) is reported apart from a second call. Also the
time per model (search time / (Cs × folds)) and the float32 search.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from .. import common
from .fit import synthetic


def run(quick: bool = False) -> dict:
    n, d, k = (10_000, 64, 10) if quick else (50_000, 128, 20)
    X, y = synthetic(n, d, k)
    folds = list(StratifiedKFold(5).split(X, y))
    Cs = np.logspace(-4, 4, 10)
    import jsoftmax

    def ours(dtype, solver):
        return jsoftmax.SoftmaxRegressionCV(Cs=Cs, cv=folds, tol=1e-6, max_iter=1000, dtype=dtype,
                                            solver=solver).fit(X, y)

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegressionCV(Cs=Cs, cv=folds, tol=1e-6, max_iter=1000).fit(X, y)

    with threadpool_limits(1):
        start = time.perf_counter()
        sk = theirs()
        sk_one = time.perf_counter() - start
    start = time.perf_counter()
    theirs()
    sk_default = time.perf_counter() - start
    rows = []
    for dtype, solver in (("float64", "newton-cg"), ("float32", "newton-cg"), ("float64", "lbfgs")):
        common.settle()  # scikit-learn's default-thread workers park first
        start = time.perf_counter()
        ours(dtype, solver)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model = ours(dtype, solver)
        second = time.perf_counter() - start
        key = list(sk.scores_)[0]
        rows.append({
            "dtype": dtype, "solver": solver, "first_call_s": first, "second_call_s": second,
            "per_model_ms": 1e3 * second / (len(Cs) * len(folds)),
            "sklearn_1thread_s": sk_one, "sklearn_default_s": sk_default,
            "ratio_vs_sklearn_1thread": second / sk_one,
            "same_C": bool(model.C_[0] == sk.C_[0]), "C": float(model.C_[0]), "sklearn_C": float(sk.C_[0]),
            "max_fold_score_diff": float(np.max(np.abs(model.scores_[key] - sk.scores_[key]))),
            "iterations_total": int(model.n_iter_.sum()), "sklearn_iterations_total": int(sk.n_iter_.sum()),
        })
        print(rows[-1], flush=True)
    return {"suite": "search", "problem": f"synthetic ({n}×{d}, K={k}), 10 Cs × 5 folds, tol 1e-6",
            "results": rows}


def markdown(payload: dict) -> str:
    rows = [[r["dtype"], r.get("solver", "lbfgs"), f"{r['second_call_s']:.2f} s", f"{r['first_call_s']:.2f} s", f"{r['per_model_ms']:.0f} ms",
             f"{r['sklearn_1thread_s']:.2f} s", f"{r['sklearn_default_s']:.2f} s",
             f"**{r['ratio_vs_sklearn_1thread']:.2f}×**", f"{r['C']:.4g} vs {r['sklearn_C']:.4g}",
             f"{r['max_fold_score_diff']:.1e}", f"{r['iterations_total']} vs {r['sklearn_iterations_total']}"]
            for r in payload["results"]]
    headers = ["jsoftmax dtype", "solver", "search (2nd call)", "first call", "per model", "sklearn 1 thread",
               "sklearn default", "ratio vs 1 thread", "chosen C (ours vs sklearn)", "max fold score diff",
               "outer iterations, all models (ours vs sklearn's L-BFGS)"]
    return f"## C × fold search: {payload['problem']}\n\n" + common.table(headers, rows)
