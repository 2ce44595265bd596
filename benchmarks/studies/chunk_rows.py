"""Rows per chunk: ``python -m benchmarks.studies.chunk_rows [--models M]``.

One model (the default): times one model's value and gradient (``jsoftmax.value_and_grad``'s
computation, jitted with X and the labels as arguments, as in a fit) at the fit suite's
synthetic shapes in float64 and float32, across rows per chunk, beside the rows ``make_plan``
picks. The rule behind those rows (``jsoftmax/_rules.json``: a 4 MiB block of f32 scores, and a
chunk's rows × (D + K) values within 8 MiB) is read from this table. Writes
``benchmarks/results/chunk-rows-<platform>.md``.

``--models M`` (M > 1): ``fit_many`` (and so ``SoftmaxRegressionCV``) evaluates M models' value
and gradient as one ``vmap`` over the same X, so a chunk holds M × K scores at once. This times
that evaluation (M models, 50,000 × 128, K = 20, float64, per-fold row weights) with chunks
planned for K, planned for M·K (what ``fit_many`` does), and at fixed sizes, against the floor:
the stacked products X·[W₁ … W_M] and Xᵀ·exp(·) alone. Writes
``benchmarks/results/search-chunks-<platform>.md``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import common

SHAPES = ((50_000, 128, 20), (100_000, 256, 50))
ROWS = (1024, 2048, 4096, 8192, 16384, 32768)


def run_one() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jsoftmax
    from jsoftmax import _engine
    from jsoftmax._compat import enable_x64

    from ..suites.fit import synthetic

    results = []
    for n, d, k in SHAPES:
        X_np, y_np = synthetic(n, d, k)
        for dtype in ("float64", "float32"):
            with enable_x64(dtype == "float64"):
                X = jax.device_put(X_np.astype(dtype))
                y = jnp.asarray(y_np, jnp.int32)
                params = jsoftmax.Params(jnp.full((d, k), 0.01, dtype), jnp.zeros(k, dtype))
                planned = _engine.make_plan(n, d, k, itemsize=np.dtype(dtype).itemsize).chunk_rows
                times = {}
                for rows in sorted({*ROWS, planned, n}):
                    step = jax.jit(lambda p, X, y, rows=rows: jax.value_and_grad(
                        lambda q: jsoftmax.risk(q, X, y, check_values=False, chunk_rows=rows))(p))
                    times[rows] = common.timed(lambda: step(params, X, y), repeats=7)["median_s"]
            results.append({"shape": [n, d, k], "dtype": dtype, "planned_rows": planned,
                            "seconds_by_rows": {str(r): t for r, t in times.items()}})
    return {"results": results}


def markdown_one(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        times = {int(k): v for k, v in r["seconds_by_rows"].items()}
        best = min(times, key=times.get)
        cells = [f"{'**' if c == r['planned_rows'] else ''}{c}: {t * 1e3:.1f}{'**' if c == r['planned_rows'] else ''}"
                 for c, t in sorted(times.items())]
        n, d, k = r["shape"]
        rows.append([f"{n}×{d}, K={k}", r["dtype"], r["planned_rows"], best,
                     f"{times[r['planned_rows']] / times[best]:.2f}", ", ".join(cells)])
    return ("## One model's value and gradient (ms) by rows per chunk; bold: what `make_plan` picks\n\n"
            + common.table(["shape", "dtype", "planned rows", "fastest rows", "planned / fastest",
                            "rows: ms"], rows))


def run_many(n: int = 50_000, d: int = 128, k: int = 20, m: int = 5) -> dict:
    import jax
    import jax.numpy as jnp

    import jsoftmax
    from jsoftmax import _engine
    from jsoftmax._compat import enable_x64

    from ..suites.fit import synthetic

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


def markdown_many(payload: dict) -> str:
    floor = payload["results"][0]["median_s"]
    n, d, k = payload["shape"]
    table = common.table(["variant", "rows per chunk", "value and gradient of all models", "× floor"],
                         [[r["variant"], r["chunk_rows"] or "", f"{r['median_s'] * 1e3:.1f} ms",
                           f"{r['median_s'] / floor:.2f}"] for r in payload["results"]])
    return f"## {payload['models']} models under vmap, {n}×{d}, K={k}, float64\n\n" + table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.chunk_rows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1, help="M > 1: M models under vmap (fit_many)")
    args = parser.parse_args(argv)
    if args.models > 1:
        return common.report("search-chunks", "Chunk rows for many models",
                             f"python -m benchmarks.studies.chunk_rows --models {args.models}",
                             run_many(m=args.models), markdown_many)
    return common.report("chunk-rows", "Rows per chunk for a dense X", "python -m benchmarks.studies.chunk_rows",
                         run_one(), markdown_one)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
