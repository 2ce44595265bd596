"""Rows per chunk for a dense X on the CPU: ``python -m benchmarks.chunk_rows``.

Times one model's value and gradient (``jsoftmax.value_and_grad``'s computation, jitted with X
and the labels as arguments, as in a fit) at the fit suite's synthetic shapes in float64 and
float32, across rows per chunk, beside the rows ``make_plan`` picks. The rule behind those rows
(``jsoftmax/_rules.json``: a 4 MiB block of f32 scores, and a chunk's rows × (D + K) values within
8 MiB) is read from this table. Writes ``benchmarks/results/chunk-rows-<platform>.md``.
"""

from __future__ import annotations

import sys

from . import common

SHAPES = ((50_000, 128, 20), (100_000, 256, 50))
ROWS = (1024, 2048, 4096, 8192, 16384, 32768)


def run() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jsoftmax
    from jsoftmax import _engine
    from jsoftmax._compat import enable_x64

    from .suite_fit import synthetic

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


def markdown(payload: dict) -> str:
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


def main(argv: list[str]) -> int:
    return common.report("chunk-rows", "Rows per chunk for a dense X", "python -m benchmarks.chunk_rows",
                         run(), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
