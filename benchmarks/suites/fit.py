"""Full-batch fits (jsoftmax L-BFGS and Newton-CG) against scikit-learn's LogisticRegression(lbfgs).

Both minimise scikit-learn's objective C Σ ℓ + ½‖W‖² (jsoftmax in its scaled form). For each
tolerance, scikit-learn runs once with one BLAS thread (threadpoolctl) and once with its default
threads; jsoftmax's first call (compilation included) is reported apart from the median of the
calls after it. The ratio is jsoftmax's post-compile median over scikit-learn's 1-thread time;
"objective ≤" says whether jsoftmax's objective is equal or lower (relative slack 1e-9).
"""

from __future__ import annotations


import itertools

import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

import jsoftmax
from jsoftmax._compat import enable_x64

from .. import common


def problems(quick: bool):
    X, y = load_digits(return_X_y=True)
    yield "digits (1797×64, K=10)", StandardScaler().fit_transform(X), y
    for n, d, k in ((10_000, 128, 20), (20_000, 256, 50)) if quick else ((50_000, 128, 20), (100_000, 256, 50)):
        X, y = synthetic(n, d, k)
        yield f"synthetic ({n}×{d}, K={k})", X, y


def synthetic(n: int, d: int, k: int, seed: int = 0):
    """Gaussian features and labels drawn from a softmax model with scores of order 1."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, k)) / np.sqrt(d / 4)
    logits = X @ W
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return X, (p.cumsum(1) > rng.random((n, 1))).argmax(1)


def objective(W, b, X, y, C):
    z = X @ W + b
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(C * -log_p[np.arange(len(y)), y].sum() + 0.5 * np.sum(W**2))


def run(quick: bool = False, dtypes: tuple[str, ...] = ("float64",),
        solvers: tuple[str, ...] = ("lbfgs", "newton-cg")) -> dict:
    """scikit-learn once per problem and tolerance; jsoftmax once per dtype and solver."""
    C = 1.0
    results = []
    blas = [f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()]
    for name, X, y in problems(quick):
        n, d = X.shape
        k = int(y.max()) + 1
        for tol in (1e-4, 1e-6):
            def sklearn_fit():
                return LogisticRegression(C=C, tol=tol, max_iter=10_000).fit(X, y)

            repeats = 3 if n < 10_000 else 1
            common.settle()
            with threadpool_limits(1):
                sk_one = common.timed(sklearn_fit, repeats=repeats, warmup=1 if n < 10_000 else 0)
                sk_model = sklearn_fit()
            sk_default = common.timed(sklearn_fit, repeats=repeats, warmup=1 if n < 10_000 else 0)
            sk_obj = objective(sk_model.coef_.T, sk_model.intercept_, X, y, C)

            for dtype, solver in itertools.product(dtypes, solvers):
                with enable_x64(dtype == "float64"):
                    Xj, yj = jnp.asarray(X, dtype), jnp.asarray(y, jnp.int32)
                    start = jsoftmax.Params(jnp.zeros((d, k), dtype), jnp.zeros(k, dtype))

                    def ours():
                        return jsoftmax.fit(start, Xj, yj, solver=solver, l2=1.0 / (C * n), tol=tol,
                                            max_iter=10_000)

                    common.settle()  # scikit-learn's threads, or the previous variant's, park first
                    first = common.first_call(ours)
                    steady = common.timed(ours, repeats=5 if n < 10_000 else 3, warmup=0)
                    result = ours()
                ours_obj = objective(np.asarray(result.params.W, np.float64),
                                     np.asarray(result.params.b, np.float64), X, y, C)
                results.append({
                    "problem": name, "tol": tol, "dtype": dtype, "solver": solver,
                    "sklearn_1thread_s": sk_one["median_s"], "sklearn_default_s": sk_default["median_s"],
                    "sklearn_iterations": int(sk_model.n_iter_[0]), "sklearn_objective": sk_obj,
                    "jsoftmax_first_call_s": first, "jsoftmax_compile_s": max(first - steady["median_s"], 0.0),
                    "jsoftmax_s": steady["median_s"], "jsoftmax_min_s": steady["min_s"],
                    "jsoftmax_max_s": steady["max_s"],
                    "jsoftmax_iterations": result.n_iter, "jsoftmax_objective": ours_obj,
                    "jsoftmax_grad_max_abs": result.grad_norm,
                    "ratio_vs_sklearn_1thread": steady["median_s"] / sk_one["median_s"],
                    "ratio_vs_sklearn_default": steady["median_s"] / sk_default["median_s"],
                    "objective_equal_or_lower": ours_obj <= sk_obj * (1 + 1e-9),
                })
                print(f"{name} tol={tol:g} {dtype} {solver}: jsoftmax {steady['median_s']*1e3:.1f} ms "
                      f"(first call {first:.2f} s), sklearn 1-thread {sk_one['median_s']*1e3:.1f} ms, "
                      f"default {sk_default['median_s']*1e3:.1f} ms; objectives {ours_obj:.8f} vs {sk_obj:.8f}",
                      flush=True)
    return {"suite": "fit", "blas": blas, "results": results}


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        rows.append([
            r["problem"], f"{r['tol']:g}", r.get("dtype", "float64"), r.get("solver", "lbfgs"),
            f"{r['jsoftmax_s']*1e3:.1f} ms ({r['jsoftmax_iterations']} it)",
            f"{r['jsoftmax_compile_s']:.2f} s",
            f"{r['sklearn_1thread_s']*1e3:.1f} ms ({r['sklearn_iterations']} it)",
            f"{r['sklearn_default_s']*1e3:.1f} ms",
            f"**{r['ratio_vs_sklearn_1thread']:.2f}×**",
            f"{r['jsoftmax_objective']:.8g} vs {r['sklearn_objective']:.8g}",
            "yes" if r["objective_equal_or_lower"] else "no",
        ])
    headers = ["problem", "tol", "jsoftmax dtype", "solver", "jsoftmax (after compile)", "jsoftmax compile", "sklearn 1 thread",
               "sklearn default threads", "ratio vs 1 thread", "objective (jsoftmax vs sklearn)",
               "objective ≤"]
    return (
        "## Full-batch L-BFGS vs scikit-learn (scikit-learn in float64)\n\n"
        f"BLAS thread pools (default): {', '.join(payload['blas'])}. jsoftmax runs XLA on all cores.\n\n"
        + common.table(headers, rows)
    )
