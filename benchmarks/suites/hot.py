"""The hot path: forward and forward+backward of the fused op against its floor and autodiff.

For every shape and variant (see variants.py): compile time (lower + compile), the median and
spread of timed runs after a warm-up, the variants run round-robin (interleaved), the ratio to the floor measured in the same run, XLA's
``memory_analysis()`` temp bytes of the compiled program (exact), and the peak memory of one
run in a fresh process (RSS growth on CPU; device peak bytes on GPU).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import jax

from .. import common, variants

CPU_SHAPES = [(8192, 512, 1000, "float32"), (4096, 1024, 32000, "float32")]
GPU_SHAPES = [(16384, 4096, 128256, "bfloat16"), (32768, 4096, 128256, "bfloat16"),
              (8192, 4096, 256000, "bfloat16")]
QUICK_SHAPES = [(2048, 256, 1000, "float32"), (1024, 512, 8000, "float32")]


def peak_memory(variant, mode, shape) -> dict:
    n, d, k, dtype = shape
    cmd = [sys.executable, "-m", "benchmarks.suites.peak", variant, mode, str(n), str(d), str(k), dtype]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as err:
        return {"error": str(err)[:200]}


def compile_variant(shape, variant, mode):
    """(compiled program, its inputs, compile seconds, temp bytes)."""
    n, d, k, dtype = shape
    x, w, y = variants.inputs(n, d, k, dtype)
    start = time.perf_counter()
    compiled = variants.build(variant, mode).lower(x, w, y).compile()
    compile_s = time.perf_counter() - start
    return compiled, (x, w, y), compile_s, int(compiled.memory_analysis().temp_size_in_bytes)


def interleaved(programs: dict, repeats: int) -> dict:
    """Median and spread per variant, the variants run round-robin (one warm-up round first),
    so that a slow phase of the machine touches every variant alike."""
    samples = {name: [] for name in programs}
    for round_ in range(repeats + 1):
        for name, (compiled, args) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            if round_:
                samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                   "repeats": repeats} for name, v in samples.items()}


def run(quick: bool = False) -> dict:
    platform = jax.devices()[0].platform
    shapes = QUICK_SHAPES if quick else (GPU_SHAPES if platform == "gpu" else CPU_SHAPES)
    results = []
    for shape in shapes:
        for mode in ("forward", "forward_backward"):
            rows, programs = {}, {}
            for variant in variants.VARIANTS:
                try:
                    compiled, args, compile_s, temp = compile_variant(shape, variant, mode)
                except Exception as err:  # noqa: BLE001 - e.g. out of memory for the naive ones
                    rows[variant] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
                    continue
                rows[variant] = {"compile_s": compile_s, "temp_bytes": temp}
                programs[variant] = (compiled, args)
            for variant, timing in interleaved(programs, repeats=3 if quick else 7).items():
                rows[variant].update(timing)
            del programs
            if not quick:
                for variant, row in rows.items():
                    if "median_s" in row:
                        row.update(peak_memory(variant, mode, shape))
            floor = rows["floor"].get("median_s")
            for row in rows.values():
                if "median_s" in row and floor:
                    row["ratio_to_floor"] = row["median_s"] / floor
            for variant, row in rows.items():
                results.append({"shape": list(shape), "mode": mode, "variant": variant, **row})
                if "median_s" in row:
                    print(f"{shape} {mode:16s} {variant:15s} {row['median_s']*1e3:9.1f} ms "
                          f"({row.get('ratio_to_floor', float('nan')):.2f}x floor) "
                          f"temp {row['temp_bytes']/2**20:8.1f} MiB", flush=True)
                else:
                    print(f"{shape} {mode} {variant}: {row['error']}", flush=True)
    return {"suite": "hot", "results": results}


def markdown(payload: dict) -> str:
    out = ["## Hot path: loss and gradients w.r.t. x and w\n",
           "The variants of a shape and mode are timed round-robin (7 rounds after a warm-up "
           "round). Ratios are to the floor (the matrix products alone) measured in the same run; "
           "temp is XLA's `memory_analysis()` of the compiled program; peak is the growth of the "
           "process RSS (sampled every ms; temps plus outputs) over three runs in a fresh process, or "
           "the device peak on a GPU.\n"]
    headers = ["shape (N, D, K, dtype)", "mode", "variant", "median", "min–max", "× floor", "compile",
               "temp", "peak"]
    rows = []
    for r in payload["results"]:
        if "median_s" not in r:
            rows.append([tuple(r["shape"]), r["mode"], r["variant"], "error", r["error"][:60], "", "", "", ""])
            continue
        peak = r.get("device_peak_bytes", r.get("peak_rss_growth_bytes"))
        rows.append([
            tuple(r["shape"]), r["mode"], r["variant"], f"{r['median_s']*1e3:.1f} ms",
            f"{r['min_s']*1e3:.1f}–{r['max_s']*1e3:.1f}", f"{r['ratio_to_floor']:.2f}",
            f"{r['compile_s']:.2f} s", f"{r['temp_bytes']/2**20:.0f} MiB",
            "" if peak is None else f"{peak/2**20:.0f} MiB",
        ])
    out.append(common.table(headers, rows))
    return "\n".join(out)
