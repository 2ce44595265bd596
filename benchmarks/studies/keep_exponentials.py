"""Keep exp(z − m) for the gradient, or compute it twice: ``python -m benchmarks.studies.keep_exponentials``.

One model's value and gradient (``jsoftmax.value_and_grad``'s computation, jitted with X and the
labels as arguments, as in a fit; 20 evaluations in one compiled loop, each using the value, as a
solver's loop does), compiled twice in the
same process: with ``_engine.KEEP_EXPONENTIALS_BYTES`` as shipped (blocks up to that size keep
their exponentials) and at 0 (every block takes a second pass of exp). Timed round-robin; XLA's
temp bytes of each program beside. Shapes: digits (standardised) and the fit suite's synthetic
problems in float64, and a CPU LM-head block in float32. Writes
``benchmarks/results/keep-exponentials-<platform>.md``; the rule is ``keep_exponentials_bytes``
in ``jsoftmax/_rules.json``.
"""

from __future__ import annotations

import sys

from .. import common

SHAPES = (("digits", "float64"), ((50_000, 128, 20), "float64"), ((100_000, 256, 50), "float64"),
          ((8192, 512, 1000), "float32"))
REPEATS = 15
EVALUATIONS = 20  # per timed call, in one compiled loop (a solver's view: no dispatch per call)


def problem(shape):
    if shape == "digits":
        from sklearn.datasets import load_digits
        from sklearn.preprocessing import StandardScaler

        X, y = load_digits(return_X_y=True)
        return "digits (1797×64, K=10)", StandardScaler().fit_transform(X), y, 10
    from ..suites.fit import synthetic

    n, d, k = shape
    X, y = synthetic(n, d, k)
    return f"synthetic ({n}×{d}, K={k})", X, y, k


def run() -> dict:
    import jax
    import jax.numpy as jnp

    import jsoftmax
    from jsoftmax import _engine
    from jsoftmax._compat import enable_x64

    from ..suites.hot import interleaved

    shipped = _engine.KEEP_EXPONENTIALS_BYTES
    results = []
    for shape, dtype in SHAPES:
        name, X_np, y_np, k = problem(shape)
        n, d = X_np.shape
        with enable_x64(dtype == "float64"):
            X = jax.device_put(X_np.astype(dtype))
            y = jnp.asarray(y_np, jnp.int32)
            params = jsoftmax.Params(jnp.full((d, k), 0.01, dtype), jnp.zeros(k, dtype))
            programs, temps = {}, {}
            for variant, limit in (("keep", shipped), ("recompute", 0)):
                # Read while tracing: the inner jitted functions' traces are dropped for each variant.
                _engine.KEEP_EXPONENTIALS_BYTES = limit
                jax.clear_caches()
                try:
                    def step(p, X, y):
                        def evaluation(_, q):  # as in a solver's loop; the value is used
                            value, grad = jax.value_and_grad(
                                lambda q: jsoftmax.risk(q, X, y, check_values=False))(q)
                            return jax.tree.map(lambda a, g: a - 1e-3 * value * g, q, grad)
                        return jax.lax.fori_loop(0, EVALUATIONS, evaluation, p)
                    compiled = jax.jit(step).lower(params, X, y).compile()
                finally:
                    _engine.KEEP_EXPONENTIALS_BYTES = shipped
                programs[variant] = (compiled, (params, X, y))
                temps[variant] = int(compiled.memory_analysis().temp_size_in_bytes)
            times = interleaved(programs, REPEATS)
        plan = _engine.make_plan(n, d, k, itemsize=jnp.dtype(dtype).itemsize)
        block = plan.chunk_rows * k * jnp.dtype(dtype).itemsize
        results.append({"problem": name, "dtype": dtype, "chunk_rows": plan.chunk_rows, "block_bytes": block,
                        "kept_by_rule": block <= shipped, "times": times, "temp_bytes": temps,
                        "ratio": times["keep"]["median_s"] / times["recompute"]["median_s"]})
        for t in times.values():  # per evaluation
            for key in ("median_s", "min_s", "max_s"):
                t[key] /= EVALUATIONS
        print(name, dtype, {v: f"{t['median_s'] * 1e3:.3f} ms" for v, t in times.items()}, flush=True)
    return {"keep_exponentials_bytes": shipped, "results": results}


def markdown(payload: dict) -> str:
    rows = []
    for r in payload["results"]:
        t, m = r["times"], r["temp_bytes"]
        rows.append([r["problem"], r["dtype"], f"{r['chunk_rows']} rows, {r['block_bytes'] / 2**20:.2f} MiB",
                     "yes" if r["kept_by_rule"] else "no",
                     f"{t['keep']['median_s'] * 1e3:.3f}", f"{t['recompute']['median_s'] * 1e3:.3f}",
                     f"**{r['ratio']:.2f}×**", f"{m['keep'] / 2**20:.2f} / {m['recompute'] / 2**20:.2f}"])
    limit = payload["keep_exponentials_bytes"] / 2**20
    return (f"## Value and gradient (ms per evaluation, {EVALUATIONS} in a compiled loop): exponentials kept vs computed twice (rule: kept up to {limit:g} MiB "
            f"blocks)\n\nRound-robin, {REPEATS} rounds after a warm-up; temp is XLA's `memory_analysis()`.\n\n"
            + common.table(["problem", "dtype", "score block", "kept by the rule", "kept (ms)", "twice (ms)",
                            "kept / twice", "temp MiB kept / twice"], rows))


def main(argv: list[str]) -> int:
    return common.report("keep-exponentials", "Keeping the exponentials of a score block",
                         "python -m benchmarks.studies.keep_exponentials", run(), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
