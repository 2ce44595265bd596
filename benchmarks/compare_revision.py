"""The fused op (and fits) of this tree against the same at another git revision, interleaved.

    python -m benchmarks.compare_revision REV [--shapes 8192x512x1000,4096x1024x32000]
                                              [--fit 50000x128x20]

Exports ``jsoftmax/`` at REV (``git archive``) into a temporary folder as ``jsoftmax_at_rev``,
compiles value-and-gradient (w.r.t. x and w, f32) of ``linear_cross_entropy`` for both, with the
matmul floor and naive ``jax.grad`` beside them, and times them round-robin (one warm-up round,
then 7). With ``--fit``, also ``jsoftmax.fit`` (float64, ``solver`` lbfgs and newton-cg, tol
1e-6, ``l2 = 1/N``) on the fit suite's synthetic problem of that shape, both trees alternately
(one warm-up fit each, then 5), wall time of the whole call. Writes
``benchmarks/results/compare-REV-<platform>.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import jax

from . import common, variants
from .suites.hot import interleaved

ROOT = Path(__file__).parent.parent


def load_revision(rev: str, folder: Path):
    """``jsoftmax`` as it was at ``rev``, importable as ``jsoftmax_at_rev``."""
    archive = folder / "rev.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "jsoftmax"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    (folder / "jsoftmax").rename(folder / "jsoftmax_at_rev")
    sys.path.insert(0, str(folder))
    return importlib.import_module("jsoftmax_at_rev")


def op(module):
    def loss(x, w, y):
        return module.linear_cross_entropy(x, w, y, check_values=False)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def fits(old, new, shape: tuple[int, int, int], rev: str, repeats: int = 5) -> list[dict]:
    """Median wall time of a whole ``fit`` call of each tree, alternately, after a warm-up each."""
    import statistics
    import time

    import numpy as np

    from jsoftmax._compat import enable_x64

    from .suites.fit import synthetic

    n, d, k = shape
    X, y = synthetic(n, d, k)
    rows = []
    with enable_x64():
        for solver in ("lbfgs", "newton-cg"):
            trees = {f"at {rev}": old, "this tree": new}
            times = {name: [] for name in trees}
            iterations = {}
            for round_ in range(repeats + 1):
                for name, module in trees.items():
                    start = module.Params(np.zeros((d, k)), np.zeros(k))
                    began = time.perf_counter()
                    result = module.fit(start, X, y, solver=solver, l2=1.0 / n, tol=1e-6, max_iter=1000)
                    elapsed = time.perf_counter() - began
                    iterations[name] = result.n_iter
                    if round_:  # the first round compiles
                        times[name].append(elapsed)
            for name, samples in times.items():
                rows.append({"shape": list(shape), "solver": solver, "variant": name,
                             "median_s": statistics.median(samples), "min_s": min(samples),
                             "max_s": max(samples), "n_iter": iterations[name]})
                print(f"fit {shape} {solver:9s} {name:16s} {statistics.median(samples)*1e3:9.1f} ms "
                      f"({iterations[name]} it)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_revision")
    parser.add_argument("rev")
    parser.add_argument("--shapes", default="8192x512x1000,4096x1024x32000")
    parser.add_argument("--fit", default=None, help="NxDxK of a fit to time in both trees")
    args = parser.parse_args(argv)
    import jsoftmax

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        for text in args.shapes.split(","):
            n, d, k = (int(v) for v in text.split("x"))
            x, w, y = variants.inputs(n, d, k, "float32")
            fns = {"floor": variants.build("floor", "forward_backward"),
                   "naive_jax_grad": variants.build("naive_jax_grad", "forward_backward"),
                   f"at {args.rev}": op(old), "this tree": op(jsoftmax)}
            programs, temps = {}, {}
            for name, fn in fns.items():
                compiled = fn.lower(x, w, y).compile()
                programs[name] = (compiled, (x, w, y))
                temps[name] = int(compiled.memory_analysis().temp_size_in_bytes)
            timing = interleaved(programs, repeats=7)
            floor = timing["floor"]["median_s"]
            for name, row in timing.items():
                results.append({"shape": [n, d, k], "variant": name, "temp_bytes": temps[name],
                                "ratio_to_floor": row["median_s"] / floor, **row})
                print(f"{(n, d, k)} {name:16s} {row['median_s']*1e3:9.1f} ms "
                      f"({row['median_s']/floor:.3f}x floor) temp {temps[name]/2**20:.0f} MiB", flush=True)
        fit_rows = [] if args.fit is None else fits(old, jsoftmax, tuple(int(v) for v in args.fit.split("x")),
                                                     args.rev)
    info = common.machine()
    command = "python -m benchmarks.compare_revision " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [[tuple(r["shape"]), r["variant"], f"{r['median_s']*1e3:.1f} ms",
             f"{r['min_s']*1e3:.1f}–{r['max_s']*1e3:.1f}", f"{r['ratio_to_floor']:.3f}",
             f"{r['temp_bytes']/2**20:.0f} MiB"] for r in results]
    md = (f"# Fused op: this tree vs revision {args.rev}\n\n" + common.stamp_markdown(info, command)
          + "\nValue and gradient w.r.t. x and w, float32, variants timed round-robin.\n\n"
          + common.table(["shape (N, D, K)", "variant", "median", "min–max", "× floor", "temp"], rows))
    if fit_rows:
        md += ("\n\n`jsoftmax.fit`, float64, tol 1e-6, l2 = 1/N, the whole call, trees alternately (median of 5 "
               "after a warm-up each).\n\n"
               + common.table(["shape (N, D, K)", "solver", "variant", "median", "min–max", "iterations"],
                              [[tuple(r["shape"]), r["solver"], r["variant"], f"{r['median_s']*1e3:.1f} ms",
                                f"{r['min_s']*1e3:.1f}–{r['max_s']*1e3:.1f}", r["n_iter"]] for r in fit_rows]))
    paths = common.write_results(f"compare-{args.rev}-{info['platform']}",
                                 {"rev": args.rev, "results": results, "fits": fit_rows, "machine": info,
                                  "command": command}, md)
    print(md)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
