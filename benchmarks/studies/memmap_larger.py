"""A memmap X larger than the memory the process may use: ``python -m benchmarks.studies.memmap_larger
[--quick] [--gib G] [--cap-gib C]``.

Writes a seeded float32 X of about G GiB (default 6) to a ``.npy`` file under the system's
temporary folder (features of a planted linear model: the labels are the argmax of XW* plus
Gumbel noise), then runs a child process inside a memory cgroup capped at C GiB (default 2,
a third of X): the kernel may keep at most C GiB of the child's pages — its own and the
file's — resident, so every pass over X reads most of it from the disk again. The child opens
X with ``np.load(mmap_mode="r")`` and runs ``jsoftmax.fit`` (L-BFGS, float32, a fixed number of
iterations): the CPU path reads the memmap in place (``jsoftmax._inplace``), one pass of X per
evaluation. Reported: the seconds per pass (evaluations counted by the fit), the disk's
sequential read rate measured in the same cgroup (a pass's floor: X's bytes over that rate),
the child's peak resident size and the objective. Needs a writable cgroup (v1 ``memory`` or
v2); writes ``benchmarks/results/memmap-larger-<platform>.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import common

ROOT = Path(__file__).resolve().parent.parent.parent
D, K = 512, 10
CHILD = r"""
import json, resource, sys, time
import numpy as np
import jsoftmax
path, labels, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
X = np.load(path, mmap_mode="r")
y = np.load(labels)
start = jsoftmax.Params(np.zeros((X.shape[1], {k}), np.float32), np.zeros({k}, np.float32))
fit = lambda max_iter: jsoftmax.fit(start, X, y, solver="lbfgs", l2=1e-4, tol=0.0, max_iter=max_iter)
fit(1)  # compiles
times, results = [], []
for max_iter in (1, 1 + iterations):  # the difference: `iterations` iterations, one pass of X each
    begin = time.perf_counter()
    results.append(fit(max_iter))
    times.append(time.perf_counter() - begin)
print(json.dumps({{"seconds": times, "n_iter": [int(r.n_iter) for r in results],
                  "objective": float(results[-1].history["loss"][-1]),
                  "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""
READ = r"""
import sys, time
block = 64 * 2**20
total = 0
begin = time.perf_counter()
with open(sys.argv[1], "rb", buffering=0) as handle:
    buffer = bytearray(block)
    while (got := handle.readinto(buffer)):
        total += got
print(total / (time.perf_counter() - begin))
"""


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first): pages cached while this
    process wrote it are charged to this process's cgroup, and the capped child would read them
    from there without ever being charged for them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_problem(folder: Path, gib: float) -> tuple[Path, Path, int]:
    """X (N, D) float32 of about ``gib`` GiB and its labels, written block by block."""
    n = int(gib * 2**30 / (D * 4))
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D, K)).astype(np.float32) / np.sqrt(D) * 3
    path, labels = folder / "X.npy", folder / "y.npy"
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
    y = np.empty(n, np.int32)
    step = 1 << 18
    for start in range(0, n, step):
        block = rng.standard_normal((min(step, n - start), D), dtype=np.float32)
        X[start:start + len(block)] = block
        y[start:start + len(block)] = np.argmax(block @ W + rng.gumbel(size=(len(block), K)), axis=1)
    X.flush()
    del X
    np.save(labels, y)
    evict(path)
    return path, labels, n


class MemoryCap:
    """A memory cgroup capped at ``limit`` bytes that a child process joins (v1 or v2)."""

    def __init__(self, limit: int):
        name = f"jsoftmax-memmap-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/memory")
        if (v1 / "memory.limit_in_bytes").exists():
            self.folder = v1 / name
            self.folder.mkdir()
            (self.folder / "memory.limit_in_bytes").write_text(str(limit))
            self.peak = self.folder / "memory.max_usage_in_bytes"
        else:
            self.folder = Path("/sys/fs/cgroup") / name
            self.folder.mkdir()
            (self.folder / "memory.max").write_text(str(limit))
            self.peak = self.folder / "memory.peak"

    def run(self, argv: list[str], env: dict) -> str:
        """argv's standard output, run inside the cgroup."""
        procs = self.folder / "cgroup.procs"
        joined = ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv]
        done = subprocess.run(joined, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        return done.stdout.strip().splitlines()[-1]

    def close(self) -> None:
        self.folder.rmdir()


def run(quick: bool, gib: float, cap_gib: float) -> dict:
    if quick:
        gib, cap_gib = 0.25, 1.0  # the path and the report, in seconds (X fits under this cap)
    iterations = 2 if quick else 4
    env = dict(os.environ, PYTHONPATH=str(ROOT), JSOFTMAX_CACHE_DIR="off")
    with tempfile.TemporaryDirectory(prefix="jsoftmax-memmap-") as folder:
        begin = time.perf_counter()
        path, labels, n = write_problem(Path(folder), gib)
        written = time.perf_counter() - begin
        cap = MemoryCap(int(cap_gib * 2**30))
        try:
            # Each read starts with the file out of the page cache; larger than the cap, it cannot stay.
            rates = []
            for _ in range(2):
                evict(path)
                rates.append(float(cap.run([sys.executable, "-c", READ, str(path)], env)))
            evict(path)
            child = json.loads(cap.run([sys.executable, "-c", CHILD.format(k=K), str(path), str(labels),
                                        str(iterations)], env))
            group_peak = int(cap.peak.read_text())
        finally:
            cap.close()
    size = n * D * 4
    return {"shape": [n, D, K], "x_bytes": size, "cap_bytes": int(cap_gib * 2**30), "iterations": iterations,
            "write_seconds": written, "read_rates": rates, "cgroup_peak_bytes": group_peak, **child}


def markdown(payload: dict) -> str:
    n, d, k = payload["shape"]
    short, long = payload["seconds"]
    per_iteration = (long - short) / max(payload["n_iter"][1] - payload["n_iter"][0], 1)
    rate = payload["read_rates"][-1]
    floor = payload["x_bytes"] / rate
    rows = [[f"{n:,}×{d}, K={k}", f"{payload['x_bytes'] / 2**30:.2f} GiB", f"{payload['cap_bytes'] / 2**30:.1f} GiB",
             f"{rate / 2**20:,.0f} MiB/s", f"{per_iteration:.2f} s", f"{floor:.2f} s", f"{per_iteration / floor:.2f}×",
             f"{payload['cgroup_peak_bytes'] / 2**20:,.0f} MiB", f"{payload['objective']:.6f}"]]
    return ("## L-BFGS, float32 memmap read in place, in a memory cgroup smaller than X\n\n"
            + common.table(["problem", "X", "memory cap", "disk read rate", "per iteration (one pass)",
                            "X / read rate", "per iteration / that", "cgroup peak", "objective"], rows)
            + f"\nPer iteration: the difference between a fit of {payload['n_iter'][1]} iterations "
            f"({long:.1f} s) and one of {payload['n_iter'][0]} ({short:.1f} s: it also checks X's values and "
            "evaluates the start), over the difference in iterations, both after a first fit that compiled; an iteration of this L-BFGS evaluates "
            "the loss and gradient once, one pass over X. The read rate is the second of two sequential reads of "
            "the file by a process in the same cgroup (the first: "
            f"{payload['read_rates'][0] / 2**20:,.0f} MiB/s). The cgroup peak is the most the fit's process held "
            "at once, its own memory and the file's pages it was charged (the kernel reclaims the file's pages "
            "at the cap; a copy of X could not have been). Its ru_maxrss, which counts every page of the file it "
            f"mapped, read {payload['peak_bytes'] / 2**20:,.0f} MiB.\n")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    gib = float(argv[argv.index("--gib") + 1]) if "--gib" in argv else 6.0
    cap_gib = float(argv[argv.index("--cap-gib") + 1]) if "--cap-gib" in argv else 2.0
    command = "python -m benchmarks.studies.memmap_larger" + (" --quick" if quick else "")
    return common.report("memmap-larger" + ("-quick" if quick else ""), "A memmap X larger than the memory cap",
                         command, run(quick, gib, cap_gib), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
