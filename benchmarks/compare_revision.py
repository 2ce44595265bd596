"""The fused op of this tree against the same op at another git revision, interleaved.

    python -m benchmarks.compare_revision REV [--shapes 8192x512x1000,4096x1024x32000]

Exports ``jsoftmax/`` at REV (``git archive``) into a temporary folder as ``jsoftmax_at_rev``,
compiles value-and-gradient (w.r.t. x and w, f32) of ``linear_cross_entropy`` for both, with the
matmul floor and naive ``jax.grad`` beside them, and times them round-robin (one warm-up round,
then 7). Writes ``benchmarks/results/compare-REV-<platform>.{json,md}``.
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
from .suite_hot import interleaved

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_revision")
    parser.add_argument("rev")
    parser.add_argument("--shapes", default="8192x512x1000,4096x1024x32000")
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
    info = common.machine()
    command = "python -m benchmarks.compare_revision " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [[tuple(r["shape"]), r["variant"], f"{r['median_s']*1e3:.1f} ms",
             f"{r['min_s']*1e3:.1f}–{r['max_s']*1e3:.1f}", f"{r['ratio_to_floor']:.3f}",
             f"{r['temp_bytes']/2**20:.0f} MiB"] for r in results]
    md = (f"# Fused op: this tree vs revision {args.rev}\n\n" + common.stamp_markdown(info, command)
          + "\nValue and gradient w.r.t. x and w, float32, variants timed round-robin.\n\n"
          + common.table(["shape (N, D, K)", "variant", "median", "min–max", "× floor", "temp"], rows))
    paths = common.write_results(f"compare-{args.rev}-{info['platform']}",
                                 {"rev": args.rev, "results": results, "machine": info,
                                  "command": command}, md)
    print(md)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
