"""Rows per chunk when M models run under ``vmap``: ``python -m benchmarks.search_chunks``.

``fit_many`` (and so ``SoftmaxRegressionCV``) evaluates M models' value and gradient as one
``vmap`` over the same X, so a chunk holds M × K scores at once. This times that evaluation
(5 models, 50,000 × 128, K = 20, float64, per-fold row weights) with chunks planned for K, planned
for M·K (what ``fit_many`` does), and at fixed sizes, against the floor: the stacked products
X·[W₁ … W_M] and Xᵀ·exp(·) alone. Writes ``benchmarks/results/search-chunks-<platform>.md``.
"""

from __future__ import annotations

import sys

import numpy as np

from . import common


def run(n: int = 50_000, d: int = 128, k: int = 20, m: int = 5) -> dict:
    import jax
    import jax.numpy as jnp

    import jsoftmax
    from jsoftmax import _engine
    from jsoftmax._compat import enable_x64

    from .suite_fit import synthetic

    X_np, y_np = synthetic(n, d, k)
    rows = []
    with enable_x64():
        X, y = jnp.asarray(X_np), jnp.asarray(y_np)
        W, b = jnp.full((m, d, k), 0.01), jnp.zeros((m, k))
        weights = 1.0 - jnp.asarray(np.eye(m)[np.arange(n) % m].T)  # fold j leaves out every m-th row

        def timed(f, *args):
            return common.timed(lambda: jax.block_until_ready(f(*args)), repeats=7, warmup=1)["median_s"]

        # X and y are arguments, as in a fit: a constant X would let XLA fold the chunks' slices.
        floor = jax.jit(lambda X, W: X.T @ jnp.exp(X @ W))
        rows.append({"variant": "floor: X·[W₁…W_M] and Xᵀ·exp(·)", "chunk_rows": None,
                     "median_s": timed(floor, X, W.transpose(1, 0, 2).reshape(d, m * k))})
        planned = {"planned for K": _engine.make_plan(n, d, k).chunk_rows,
                   "planned for M·K (fit_many)": _engine.make_plan(n, d, m * k).chunk_rows}
        sizes = {**planned, **{f"{c} rows": c for c in (16384, 4096, 2048, n) if c not in planned.values()}}
        for name, c in sizes.items():
            many = jax.jit(jax.vmap(lambda W, b, w, X, y, c=c: jax.value_and_grad(
                lambda p: jsoftmax.risk(p, X, y, sample_weight=w, check_values=False, chunk_rows=c))(
                jsoftmax.Params(W, b)), in_axes=(0, 0, 0, None, None)))
            rows.append({"variant": name, "chunk_rows": c, "median_s": timed(many, W, b, weights, X, y)})
    return {"shape": [n, d, k], "models": m, "results": rows}


def markdown(payload: dict) -> str:
    floor = payload["results"][0]["median_s"]
    n, d, k = payload["shape"]
    table = common.table(["variant", "rows per chunk", "value and gradient of all models", "× floor"],
                         [[r["variant"], r["chunk_rows"] or "", f"{r['median_s'] * 1e3:.1f} ms",
                           f"{r['median_s'] / floor:.2f}"] for r in payload["results"]])
    return f"## {payload['models']} models under vmap, {n}×{d}, K={k}, float64\n\n" + table


def main(argv: list[str]) -> int:
    return common.report("search-chunks", "Chunk rows for many models", "python -m benchmarks.search_chunks",
                         run(), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
