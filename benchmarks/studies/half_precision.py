"""Features stored in half precision, fitted as stored: ``python -m benchmarks.studies.half_precision``.

Synthetic features with a planted linear model (50,000 × 128, K = 20: the fit suite's shape;
labels drawn from the planted model's softmax, so accuracy means something) are stored in
float32, bfloat16 and float16, and each copy is fitted by ``jsoftmax.fit`` (L-BFGS, float32
parameters, ``l2 = 1/N``, tol 1e-4, at most 500 iterations): the objective of the fitted
parameters on the float32 values, the accuracy on a held-out 10,000 rows, the iterations and
stop reason, and the time of the fit and per iteration (median of 3 after a warm-up fit). X's
bytes are what the fit's layout holds. Writes ``benchmarks/results/half-precision-<platform>.md``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .. import common

N, D, K, HELD_OUT = 50_000, 128, 20, 10_000


def planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, K)) / np.sqrt(D) * 3
    X = rng.standard_normal((N + HELD_OUT, D)).astype(np.float32)
    y = np.argmax(X @ W + rng.gumbel(size=(N + HELD_OUT, K)), axis=1)
    return X[:N], y[:N], X[N:], y[N:]


def run() -> dict:
    import jax.numpy as jnp
    import ml_dtypes

    import jsoftmax

    X, y, X_test, y_test = planted()
    l2 = 1.0 / N
    results = []
    for name, dtype in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)):
        stored = X.astype(dtype)
        start = jsoftmax.Params(np.zeros((D, K), np.float32), np.zeros(K, np.float32))

        def fit(stored=stored, start=start):
            return jsoftmax.fit(start, stored, y, solver="lbfgs", l2=l2, tol=1e-4, max_iter=500)

        fit()  # compiles
        times, result = [], None
        for _ in range(3):
            begin = time.perf_counter()
            result = fit()
            times.append(time.perf_counter() - begin)
        params = jsoftmax.Params(jnp.asarray(result.params.W), jnp.asarray(result.params.b))
        objective = float(jsoftmax.risk(params, X, y, l2=l2))
        scores = X_test @ np.asarray(result.params.W) + np.asarray(result.params.b)
        results.append({"dtype": name, "x_bytes": int(stored.nbytes), "seconds": sorted(times)[1],
                        "n_iter": int(result.n_iter), "stop_reason": result.stop_reason,
                        "objective": objective, "accuracy": float(np.mean(np.argmax(scores, 1) == y_test)),
                        "params_dtype": str(result.params.W.dtype)})
    return {"shape": [N, D, K], "results": results}


def markdown(payload: dict) -> str:
    base = payload["results"][0]
    rows = []
    for r in payload["results"]:
        rows.append([r["dtype"], f"{r['x_bytes'] / 2**20:.1f} MiB", r["params_dtype"], r["n_iter"], r["stop_reason"],
                     f"{r['objective']:.7f}", f"{(r['objective'] - base['objective']) / base['objective']:+.1e}",
                     f"{r['accuracy']:.4f}", f"{r['seconds']:.2f} s", f"{r['seconds'] / max(r['n_iter'], 1) * 1e3:.1f} ms"])
    n, d, k = payload["shape"]
    return (f"## L-BFGS fits of X stored three ways, {n}×{d}, K={k}; objective on the float32 values\n\n"
            + common.table(["X stored as", "X", "params", "iterations", "stop", "objective", "vs float32",
                            "held-out accuracy", "fit", "per iteration"], rows))


def main(argv: list[str]) -> int:
    return common.report("half-precision", "Half-precision features, fitted as stored",
                         "python -m benchmarks.studies.half_precision", run(), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
