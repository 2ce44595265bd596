"""The rcv1-shaped fit from the command line: ``python -m benchmarks.studies.sparse_cli [problem]``.

Writes the seeded problem of ``benchmarks/sparse_data.py`` (rcv1-shaped by default) as a LIBSVM
file, then runs, each in a fresh process:

- ``jsoftmax train FILE --test-size 0 --no-standardize --solver newton-cg --C 1 --tol 1e-6
  --json`` (the CLI's own entry point): wall time, the fit's seconds from its ``--json``, and the
  process's peak resident size; once compiling (``JSOFTMAX_CACHE_DIR=off``), then twice with a
  fresh cache folder, the second run loading the compiled programs as a user's later runs do;
- the same process without the fit: import jsoftmax and load the file as the CLI does (through
  scikit-learn's ``load_svmlight_file``), and its peak resident size.

The difference of the two peaks is what the fit adds to Python, JAX and the loaded CSR,
compared with the CSR's bytes plus the D × K float64 weights (the sparse suite's budget).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent

# Each child reports its own peak resident size (ru_maxrss, KiB on Linux) on its last line.
PEAK = "import resource, sys; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)"
TRAIN = ("import sys; from jsoftmax.cli import main; code = main({argv!r}); " + PEAK + "; sys.exit(code)")
LOAD = ("from jsoftmax.io import data as loaders; X, y = loaders.load_file({path!r}); import jsoftmax.sklearn; " + PEAK)


def _child(code: str, cache: str = "off") -> tuple[str, int, float]:
    env = dict(os.environ, JSOFTMAX_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout, int(done.stderr.strip().splitlines()[-1]), seconds


def run(name: str = "rcv1") -> dict:
    from sklearn.datasets import dump_svmlight_file

    from ..sparse_data import SHAPES, make

    X, y = make(name)
    n, d, _, k = SHAPES[name]
    csr_bytes = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}.svm")
        dump_svmlight_file(X, y, path, zero_based=False)
        file_bytes = os.path.getsize(path)
        del X
        argv = ["train", path, "--test-size", "0", "--no-standardize", "--solver", "newton-cg", "--C", "1",
                "--tol", "1e-6", "--json"]
        runs = {}
        for label, cache in (("cold", "off"), ("fills the cache", os.path.join(folder, "cache")),
                             ("warm", os.path.join(folder, "cache"))):
            out, peak, seconds = _child(TRAIN.format(argv=argv), cache)
            runs[label] = {"wall_s": seconds, "fit_s": json.loads(out)["fit_seconds"], "peak_bytes": peak}
        _, load_peak, load_s = _child(LOAD.format(path=path))
    payload = json.loads(out)
    return {"problem": name, "shape": [n, d, k], "nnz": payload["data"]["nnz"], "file_bytes": file_bytes,
            "csr_bytes": csr_bytes, "weights_bytes": d * k * 8, "cli_command": "jsoftmax " + " ".join(
                a if a != path else f"{name}.svm" for a in argv),
            "runs": runs, "load_s": load_s,
            "n_iter": payload["optimality"]["n_iter"], "converged": payload["optimality"]["converged"],
            "train_log_loss": payload["train"]["log_loss"], "load_peak_bytes": load_peak}


def markdown(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    budget = r["csr_bytes"] + r["weights_bytes"]
    n, d, k = r["shape"]
    rows = [["command", f"`{r['cli_command']}`", "", ""],
            ["file", f"{r['file_bytes'] / 2**20:.0f} MiB LIBSVM, {r['nnz']:,} stored; CSR {mib(r['csr_bytes'])}",
             "", ""],
            ["result", f"{r['n_iter']} iterations, converged {r['converged']}, train log loss "
                       f"{r['train_log_loss']:.6f}", "", ""],
            ["a process that only imports jsoftmax and loads the file", f"{r['load_s']:.1f} s",
             "", f"peak {mib(r['load_peak_bytes'])}"]]
    for label, run in r["runs"].items():
        added = run["peak_bytes"] - r["load_peak_bytes"]
        rows.append([f"`jsoftmax train`, {label}", f"{run['wall_s']:.1f} s", f"{run['fit_s']:.2f} s",
                     f"peak {mib(run['peak_bytes'])}; the fit adds {mib(added)} (**{added / budget:.2f}×** CSR + W)"])
    return (f"## {r['problem']}-shaped LIBSVM file ({n}×{d}, K={k}), trained from the command line\n\n"
            + common.table(["", "whole command", "fit (from `--json`)", "memory"], rows))


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "rcv1"
    return common.report("sparse-cli", "A sparse fit from the command line",
                         "python -m benchmarks.studies.sparse_cli" + (f" {name}" if argv else ""), run(name), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
