"""The GPU proof in one command: ``python -m benchmarks.gpu [--out DIR] [--quick] [--parts ...]``.

Runs on a lent GPU machine (after ``make gpu-wheels`` here and installing the carried wheels
there), each part in its own process with its own time limit, and writes under ``--out``
(default ``benchmarks/results/gpu/``):

- ``lmhead``: the LM-head op in bf16, forward + backward w.r.t. x and W, at (N, D, K) =
  (16384, 4096, 128256) and (8192, 2304, 256000): the three-matmul floor, jsoftmax's chunked op
  (and a sweep of its row-chunk size), naive ``jax.grad`` and optax + ``jax.grad``, timed
  round-robin in one process; XLA's temp bytes of each compiled program (the memory beyond
  inputs and outputs); the chunked op's device peak in a fresh process; the chunked values and
  gradients against naive ``jax.grad`` on the same bf16 inputs; the GEMMs in the compiled HLO.
- ``torch``: Liger-Kernel's fused linear cross-entropy and CCE's ``linear_cross_entropy`` (and a
  torch three-matmul floor) at the same shapes, CUDA events, ``max_memory_allocated`` beyond the
  inputs and gradients (``benchmarks/gpu/torch_child.py``).
- ``fit``: the fit suite's problems, jsoftmax on the GPU in float32 and float64 against
  scikit-learn on the host's cores.
- ``search``: a whole C × fold search (``SoftmaxRegressionCV``, one program) against
  scikit-learn's ``LogisticRegressionCV`` (``benchmarks/suites/search.py``).
- ``sparse``: the sparse suite's text-shaped fits (news20, rcv1) with the model on the device
  against scikit-learn on the same CSR (``benchmarks/suites/sparse.py``), device peak memory.
- ``probe``: linear probes at imnet's and places' shapes, float32 and bfloat16-stored: one fit,
  CLIP's C search and refit, device peak, the floor, scikit-learn capped
  (``benchmarks/gpu/probe.py``).
- ``penalties``: L1 and elastic-net fits (OWL-QN on the device), the l1_ratio × C × fold search,
  the digits path and the news20-shaped sparse fit against scikit-learn's saga on the host, in
  that order, each row written as it lands (``benchmarks/suites/penalties.py``).
- ``tests``: the test suite with ``JAX_PLATFORMS=cuda``.

Everything lands in ``results.json`` and ``summary.md`` (plus ``run.log`` and ``tests.log``),
few files, because a lent machine returns at most eight. On a machine without a GPU the same
command runs at small sizes with ``--quick`` (CI keeps it from rotting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu"
PARTS = ("lmhead", "torch", "fit", "search", "sparse", "probe", "penalties", "tests")
SHAPES = [(16384, 4096, 128256), (8192, 2304, 256000)]
QUICK_SHAPES = [(1024, 256, 4000), (512, 128, 8000)]
CHUNK_SWEEP = (512, 1024, 2048, 4096)
QUICK_CHUNK_SWEEP = (128, 256)
# Memory vs N (compiled only, nothing allocated): the first shape's D and K at growing N.
MEMORY_NS = (4096, 8192, 16384, 32768)
QUICK_MEMORY_NS = (256, 512, 1024)
SOFTCAP = 30.0  # Gemma 2's final-logit cap
# Options of the op, each a variant timed beside the default (which is "auto" for both).
OPTION_VARIANTS = {
    "chunked_f32_dW": dict(weight_grad_accumulation="float32"),
    "chunked_bf16_dW": dict(weight_grad_accumulation="input"),
    "chunked_recompute": dict(backward="recompute"),
    f"chunked_softcap{SOFTCAP:g}": dict(softcap=SOFTCAP),
    "chunked_accuracy": dict(return_accuracy=True),
}
# Measured elsewhere, printed beside ours, never re-run (issue 12): tokamax on an H100 at the
# first shape.
ANCHORS = {"tokamax XLA fwd+vjp (H100, 16384×4096×128256)": "104 ms, 5.4/12.0 GB peak",
           "tokamax chunked XLA (H100, same shape)": "199 ms, 5.8 GB peak"}


# ----------------------------------------------------------------------------- parts (child side)

def part_lmhead(quick: bool, out: Path) -> dict:
    """Written after each shape, so a run cut by its time limit keeps the shapes it timed."""
    import jax

    import jsoftmax

    from .. import variants

    def chunked_at(rows):
        def loss(x, w, y):
            return jsoftmax.linear_cross_entropy(x, w, y, chunk_size=rows, check_values=False)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def chunked_with(options):
        def loss(x, w, y):
            out = jsoftmax.linear_cross_entropy(x, w, y, check_values=False, **options)
            return out if isinstance(out, jax.Array) else (out[0], out[1:])
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux="return_accuracy" in options))

    part_file = out / "part-lmhead.json"

    def keep(payload: dict) -> None:
        part_file.write_text(json.dumps(payload, indent=1, default=float))

    results = []
    for index, (n, d, k) in enumerate(QUICK_SHAPES if quick else SHAPES):
        x, w, y = variants.inputs(n, d, k, "bfloat16")
        builders = {name: (lambda v=name: variants.build(v, "forward_backward"))
                    for name in ("floor", "chunked", "naive_jax_grad", "optax_jax_grad")}
        for name, options in OPTION_VARIANTS.items():
            builders[name] = lambda o=options: chunked_with(o)
        for rows in QUICK_CHUNK_SWEEP if quick else CHUNK_SWEEP:  # the data behind the GPU chunk rule
            builders[f"chunked_rows{rows}"] = lambda r=rows: chunked_at(r)
        programs, rows_out = {}, {}
        for name, build in builders.items():
            start = time.perf_counter()
            try:
                compiled = build().lower(x, w, y).compile()
            except Exception as err:  # noqa: BLE001 - e.g. out of memory for an autodiff variant
                rows_out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
                continue
            rows_out[name] = {"compile_s": time.perf_counter() - start,
                              "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}
            programs[name] = compiled
        samples = {name: [] for name in programs}
        outputs = {}
        for round_ in range(4 if quick else 11):
            for name, compiled in programs.items():
                start = time.perf_counter()
                result = jax.block_until_ready(compiled(x, w, y))
                if round_:
                    samples[name].append(time.perf_counter() - start)
                else:
                    outputs[name] = result
        floor = statistics.median(samples["floor"]) if samples.get("floor") else None
        for name, values in samples.items():
            median = statistics.median(values)
            rows_out[name].update(median_s=median, min_s=min(values), max_s=max(values),
                                  repeats=len(values), ratio_to_floor=median / floor if floor else None)
        if "naive_jax_grad" in outputs:
            for name in ("chunked", "chunked_f32_dW", "chunked_bf16_dW", "chunked_recompute"):
                if name in outputs:
                    rows_out[name]["agreement_vs_naive"] = _agreement(outputs[name], outputs["naive_jax_grad"])
        if "chunked" in programs:
            text = programs["chunked"].as_text()
            rows_out["chunked"]["gemms"] = _gemm_lines(text)
            rows_out["chunked"]["host_transfers_in_hlo"] = _host_lines(text)
            rows_out["chunked"]["result_devices"] = sorted({d.platform for leaf in jax.tree.leaves(outputs["chunked"])
                                                            for d in leaf.devices()})
        del programs, outputs
        inputs_bytes = sum(int(a.size) * a.dtype.itemsize for a in (x, w, y))
        for name in ("chunked",):
            if "median_s" in rows_out.get(name, {}):
                rows_out[name].update(_fresh_peak(name, n, d, k))
                peak = rows_out[name].get("device_peak_bytes")
                if peak is not None:
                    # Outputs: loss + dx (N, D) + dW (D, K), bf16 like the inputs.
                    outputs_bytes = 2 * (n * d + d * k)
                    rows_out[name]["peak_beyond_inputs_outputs_bytes"] = peak - inputs_bytes - outputs_bytes
        for name, row in rows_out.items():
            results.append({"shape": [n, d, k], "dtype": "bfloat16", "variant": name, **row})
            if "median_s" in row:
                print(f"{(n, d, k)} {name:20s} {row['median_s']*1e3:9.2f} ms "
                      f"({row['ratio_to_floor'] or float('nan'):.2f}x floor) temp {row['temp_bytes']/2**30:6.2f} GiB",
                      flush=True)
            else:
                print(f"{(n, d, k)} {name}: {row['error']}", flush=True)
        keep({"results": results})
    payload = {"results": results, "memory_vs_n": _memory_vs_n(quick)}
    keep(payload)
    return {**payload, "check_values": _check_values_rate(quick)}


def _memory_vs_n(quick: bool) -> list[dict]:
    """XLA's temp bytes of each program at growing N (compiled from shapes; nothing allocated)."""
    import jax
    import jax.numpy as jnp

    from .. import variants

    _, d, k = (QUICK_SHAPES if quick else SHAPES)[0]
    rows = []
    for n in QUICK_MEMORY_NS if quick else MEMORY_NS:
        shapes = (jax.ShapeDtypeStruct((n, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, k), jnp.bfloat16),
                  jax.ShapeDtypeStruct((n,), jnp.int32))
        for name in ("chunked", "optax_jax_grad", "floor"):
            row = {"n": n, "d": d, "k": k, "variant": name}
            try:
                compiled = variants.build(name, "forward_backward").lower(*shapes).compile()
                row["temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
            except Exception as err:  # noqa: BLE001 - e.g. too large for the device
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            rows.append(row)
            print(f"memory N={n} {name:15s} " + (f"{row['temp_bytes']/2**30:.2f} GiB" if "temp_bytes" in row
                                                   else row["error"]), flush=True)
    return rows


CHECK_SETTINGS = ("False", "True", "True+traced")  # check_values, and JSOFTMAX_CHECK_TRACED=1


def _check_values_rate(quick: bool, shape: tuple[int, int, int] | None = None, steps: int | None = None) -> dict:
    """Training steps per second of a jitted SGD step on the op: with ``check_values=False``,
    with the default ``check_values=True`` (inside jit the value checks are off unless
    ``JSOFTMAX_CHECK_TRACED=1``), and with that switch on (a ``jax.debug.callback`` per check:
    does it stall the device each step?)."""
    import jax

    import jsoftmax
    from jsoftmax import _validate

    from .. import variants

    n, d, k = shape or ((512, 64, 1000) if quick else (8192, 2048, 32768))
    steps = steps or (5 if quick else 50)
    x, w, y = variants.inputs(n, d, k, "bfloat16")

    def compiled(setting):
        def step(w, x, y):
            check = setting != "False"
            g = jax.grad(lambda w: jsoftmax.linear_cross_entropy(x, w, y, check_values=check))(w)
            return w - 1e-3 * g
        previous = os.environ.pop(_validate.TRACED_CHECKS_ENV, None)
        try:
            if setting == "True+traced":
                os.environ[_validate.TRACED_CHECKS_ENV] = "1"  # read while tracing
            return jax.jit(step).lower(w, x, y).compile()
        finally:
            os.environ.pop(_validate.TRACED_CHECKS_ENV, None)
            if previous is not None:
                os.environ[_validate.TRACED_CHECKS_ENV] = previous

    programs = {setting: compiled(setting) for setting in CHECK_SETTINGS}
    hlo_callbacks = {setting: _host_lines(program.as_text()) for setting, program in programs.items()}
    rates = {setting: [] for setting in programs}
    for fn in programs.values():  # warm-up
        jax.block_until_ready(fn(w, x, y))
    for _ in range(3):
        for setting, fn in programs.items():
            current = w
            start = time.perf_counter()
            for _ in range(steps):
                current = fn(current, x, y)
            jax.block_until_ready(current)
            rates[setting].append(steps / (time.perf_counter() - start))
    out = {"shape": [n, d, k], "steps": steps, "steps_per_s": {c: statistics.median(v) for c, v in rates.items()},
           "host_callbacks_in_hlo": hlo_callbacks}
    print(f"check_values steps/s: {out['steps_per_s']}", flush=True)
    return out


def _host_lines(hlo: str, limit: int = 8) -> list[str]:
    """Lines of a compiled program that move data to or call back into the host."""
    keys = ("callback", "host", "send", "recv", "outfeed", "infeed")
    return [line.strip()[:200] for line in hlo.splitlines()
            if any(key in line.lower() for key in keys) and "=" in line][:limit]


def _agreement(ours, theirs) -> dict:
    """Relative differences (normwise) of the loss and of each gradient."""
    import numpy as np

    (value_a, grads_a), (value_b, grads_b) = ours, theirs
    out = {"loss": abs(float(value_a) - float(value_b)) / max(abs(float(value_b)), 1e-30)}
    for name, a, b in zip(("dx", "dW"), grads_a, grads_b):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        out[name] = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30))
    return out


def _gemm_lines(hlo: str, limit: int = 12) -> list[str]:
    """The GEMM calls of a compiled program (operand and result types show the accumulation)."""
    lines = [line.strip()[:240] for line in hlo.splitlines()
             if ("gemm" in line or " dot(" in line) and "=" in line and "ENTRY" not in line]
    return lines[:limit]


def _fresh_peak(variant: str, n: int, d: int, k: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.suites.peak", variant, "forward_backward", str(n), str(d), str(k), "bfloat16"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as err:
        return {"peak_error": str(err)[-300:]}


def part_fit(quick: bool) -> dict:
    from ..suites import fit as suite_fit

    return suite_fit.run(quick=quick, dtypes=("float32", "float64"))


def part_search(quick: bool) -> dict:
    from ..suites import search as suite_search

    return suite_search.run(quick=quick)


def part_sparse(quick: bool, out: Path, limit_s: float) -> dict:
    """The sparse suite's text-shaped fits with the model on the device (news20 first: it is the
    shorter), written after each row so a cut-off run keeps what it measured."""
    from ..suites import sparse as suite_sparse

    def keep(payload: dict) -> None:
        (out / "part-sparse.json").write_text(json.dumps(payload, indent=1, default=float))

    return suite_sparse.run(quick=quick, problems=None if quick else ("news20", "rcv1"),
                            deadline=time.monotonic() + limit_s - 5, on_result=keep)


def part_probe(quick: bool, out: Path, limit_s: float) -> dict:
    """Linear probes at imnet's and places' shapes (``benchmarks/gpu/probe.py``), written after
    each problem so that a cut-off run keeps what it measured."""
    from . import probe

    def keep(payload: dict) -> None:
        (out / "part-probe.json").write_text(json.dumps(payload, indent=1, default=float))

    return probe.run(quick, deadline=time.monotonic() + limit_s - 5, on_result=keep)


def part_penalties(quick: bool, out: Path, limit_s: float) -> dict:
    """The penalties suite with jsoftmax on the device (saga on the host, as on the CPU), the
    cheapest rows first, written after each so that a cut-off run keeps what it measured."""
    from ..suites import penalties as suite_penalties

    def keep(payload: dict) -> None:
        (out / "part-penalties.json").write_text(json.dumps(payload, indent=1, default=float))

    return suite_penalties.run(quick=quick, deadline=time.monotonic() + limit_s - 5, on_result=keep)


def part_torch(quick: bool) -> dict:
    from . import torch_child as gpu_torch

    return gpu_torch.run(QUICK_SHAPES if quick else SHAPES, softcap=SOFTCAP)


def part_tests(quick: bool, out: Path, limit_s: float) -> dict:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    env.setdefault("JAX_PLATFORMS", _jax_platform())
    env.setdefault("JSOFTMAX_CACHE_DIR", "off")  # as `make test`: tests count compilations
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "--junitxml", str(out / "tests.xml")]
    if _has_module("xdist") and not quick:
        cmd += ["-n", "8"]
    if quick:
        cmd += ["tests/op/test_linear_ce.py"]
    start = time.perf_counter()
    with open(out / "tests.log", "w") as log:
        try:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=limit_s)
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    summary = ""
    lines = (out / "tests.log").read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if " passed" in line or " failed" in line or " error" in line:
            summary = line.strip("= ")
            break
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"returncode": code, "summary": summary, "failures": failures[:50],
            "seconds": time.perf_counter() - start, "command": " ".join(cmd[1:]),
            "JAX_PLATFORMS": env["JAX_PLATFORMS"]}


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _jax_platform() -> str:
    import jax

    return "cuda" if jax.devices()[0].platform == "gpu" else "cpu"


def child(part: str, quick: bool, out: Path, limit_s: float) -> None:
    if part == "tests":
        payload = part_tests(quick, out, limit_s)
    elif part == "sparse":
        payload = part_sparse(quick, out, limit_s)
    elif part == "lmhead":
        payload = part_lmhead(quick, out)
    elif part == "probe":
        payload = part_probe(quick, out, limit_s)
    elif part == "penalties":
        payload = part_penalties(quick, out, limit_s)
    else:
        payload = {"fit": part_fit, "torch": part_torch,
                   "search": part_search}[part](quick)
    (out / f"part-{part}.json").write_text(json.dumps(payload, indent=1, default=float))


# ----------------------------------------------------------------------------- driver

def machine() -> dict:
    from .. import common

    info = common.machine()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in ("optax", "sklearn", "torch", "triton", "liger_kernel", "cut_cross_entropy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or without __version__
            try:
                from importlib.metadata import version

                versions[name] = version(name.replace("_", "-"))
            except Exception:  # noqa: BLE001
                versions[name] = None
    info["versions"] = versions
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", "--dry-run", dest="quick", action="store_true",
                        help="the same code paths at tiny sizes (CPU is fine; parts that need CUDA, "
                             "torch or the carried wheels say they were skipped)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="wall-clock budget for all parts; each part gets its share, the tests the rest")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--limit-s", type=float, default=600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.quick, args.out, args.limit_s)
        return 0

    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"command": command.strip(), "machine": machine(), "quick": args.quick, "parts": {}}
    print(json.dumps(payload["machine"], indent=1), flush=True)
    shares = {"lmhead": 0.65, "torch": 0.2, "fit": 0.2, "search": 0.15, "sparse": 0.5, "probe": 0.6,
              "penalties": 0.5, "tests": 0.45}  # the last part gets what is left
    deadline = time.monotonic() + args.budget_s
    log = open(args.out / "run.log", "a")
    for part in args.parts:
        left = deadline - time.monotonic()
        limit = max(30.0, left - 10) if part == args.parts[-1] else max(30.0, min(left, shares[part] * args.budget_s))
        start = time.perf_counter()
        print(f"--- {part} (limit {limit:.0f} s)", flush=True)
        log.write(f"--- {part} (limit {limit:.0f} s)\n")
        log.flush()
        cmd = [sys.executable, "-u", "-m", "benchmarks.gpu", "--child", part, "--out", str(args.out),
               "--limit-s", str(limit - 5)] + (["--quick"] if args.quick else [])
        try:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  cwd=ROOT, timeout=limit)
            text, code = done.stdout, done.returncode
        except subprocess.TimeoutExpired as err:
            text, code = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or ""), "timeout"
        print(text[-6000:], flush=True)
        log.write(text)
        log.flush()
        part_file = args.out / f"part-{part}.json"
        entry = {"returncode": code, "seconds": time.perf_counter() - start}
        if part_file.exists():
            entry.update(json.loads(part_file.read_text()))
            part_file.unlink()
        else:
            entry["error_tail"] = text[-2000:]
        payload["parts"][part] = entry
        (args.out / "results.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
        (args.out / "summary.md").write_text(summary_markdown(payload))
    log.close()
    plotted = write_plot(payload, args.out / "lmhead.png")
    print(f"plot: {plotted}" if plotted else "plot: skipped (matplotlib missing or no LM-head results)")
    print(summary_markdown(payload))
    return 0


# ----------------------------------------------------------------------------- report

# (ours, theirs) pairs compared in the side-by-side table: like for like.
PAIRS = [("chunked", "liger_flce"), ("chunked", "cce"), ("chunked_recompute", "cce"),
         (f"chunked_softcap{SOFTCAP:g}", f"liger_flce_softcap{SOFTCAP:g}"),
         (f"chunked_softcap{SOFTCAP:g}", f"cce_softcap{SOFTCAP:g}"),
         ("chunked_accuracy", "liger_flce_accuracy")]


def side_by_side_markdown(jax_rows: list[dict], torch_rows: list[dict]) -> str:
    """Ours against Liger and CCE, measured in the same run (each against its own floor too)."""
    ours = {(tuple(r["shape"]), r["variant"]): r for r in jax_rows if "median_s" in r}
    theirs = {(tuple(r["shape"]), r["variant"]): r for r in torch_rows if "median_ms" in r}
    rows = []
    for shape in sorted({key[0] for key in ours}, key=str):
        for mine, other in PAIRS:
            a, b = ours.get((shape, mine)), theirs.get((shape, other))
            if not a or not b:
                continue
            floor_torch = theirs.get((shape, "torch_floor"))
            rows.append([shape, mine, other, f"{a['median_s']*1e3:.2f} ms", f"{b['median_ms']:.2f} ms",
                         f"**{a['median_s']*1e3/b['median_ms']:.2f}×**",
                         f"{a['ratio_to_floor']:.2f}" if a.get("ratio_to_floor") else "",
                         f"{b['median_ms']/floor_torch['median_ms']:.2f}" if floor_torch else "",
                         f"{a['temp_bytes']/2**30:.2f} GiB", f"{b['peak_beyond_bytes']/2**30:.2f} GiB"])
    if not rows:
        return ""
    return ("## Side by side, same run: jsoftmax (JAX/XLA) vs Liger-Kernel and CCE (torch + triton)\n\n"
            "Times are medians (ours: wall clock around a blocked call; theirs: CUDA events). "
            "× floor: each against the three matrix products in its own framework, same run. "
            "Memory: ours is XLA's temp bytes, theirs max_memory_allocated beyond inputs and "
            "gradients.\n\n"
            + common_table(["shape", "jsoftmax", "vs", "jsoftmax", "theirs", "ours / theirs",
                            "ours × floor", "theirs × floor", "ours temp", "their peak"], rows))


def common_table(headers, rows):
    from .. import common

    return common.table(headers, rows)


def _memory_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    ns = sorted({r["n"] for r in rows})
    names = [name for name in ("chunked", "optax_jax_grad", "floor") if any(r["variant"] == name for r in rows)]
    table = []
    for n in ns:
        line = [n]
        for name in names:
            r = next((r for r in rows if r["n"] == n and r["variant"] == name), {})
            line.append(f"{r['temp_bytes']/2**30:.2f} GiB" if "temp_bytes" in r else r.get("error", "")[:60])
        table.append(line)
    d, k = rows[0]["d"], rows[0]["k"]
    return (f"### Memory vs N (D={d}, K={k}, bf16, forward + backward; XLA temp bytes of the compiled "
            "program, nothing allocated)\n\n" + common_table(["N"] + names, table))


def _check_values_markdown(entry: dict | None) -> str:
    if not entry:
        return ""
    rates = entry["steps_per_s"]
    callbacks = entry["host_callbacks_in_hlo"]
    labels = {"False": "False", "True": "True (default: off inside jit)",
              "True+traced": "True, JSOFTMAX_CHECK_TRACED=1"}
    settings = [s for s in CHECK_SETTINGS if s in rates]
    return (f"### check_values inside a jitted training step (shape {tuple(entry['shape'])}, bf16, "
            f"{entry['steps']} SGD steps, median of 3)\n\n"
            + common_table(["check_values", "steps/s", "host callbacks in the compiled step"],
                           [[labels[s], f"{rates[s]:.1f}", len(callbacks[s])] for s in settings])
            + "\nRatio to check_values=False: "
            + ", ".join(f"{labels[s]} {rates[s] / rates['False']:.3f}" for s in settings[1:]) + ".\n")


def write_plot(payload: dict, path: Path) -> str | None:
    """PNG: time / floor per variant and shape (ours and theirs), and memory vs N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    parts = payload["parts"]
    jax_rows = [r for r in parts.get("lmhead", {}).get("results", []) if r.get("ratio_to_floor")]
    if not jax_rows:
        return None
    torch_rows = [r for r in parts.get("torch", {}).get("results", []) if "median_ms" in r]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    shapes = sorted({tuple(r["shape"]) for r in jax_rows}, key=str)
    names = [v for v in ("chunked", "chunked_recompute", f"chunked_softcap{SOFTCAP:g}", "naive_jax_grad",
                         "optax_jax_grad") if any(r["variant"] == v for r in jax_rows)]
    torch_names = [v for v in ("liger_flce", "cce", "torch_naive") if any(r["variant"] == v for r in torch_rows)]
    width = 0.8 / max(len(names) + len(torch_names), 1)
    for i, name in enumerate(names + torch_names):
        values = []
        for shape in shapes:
            if name in names:
                r = next((r for r in jax_rows if tuple(r["shape"]) == shape and r["variant"] == name), None)
                values.append(r["ratio_to_floor"] if r else 0)
            else:
                r = next((r for r in torch_rows if tuple(r["shape"]) == shape and r["variant"] == name), None)
                f = next((r for r in torch_rows if tuple(r["shape"]) == shape and r["variant"] == "torch_floor"), None)
                values.append(r["median_ms"] / f["median_ms"] if r and f else 0)
        axes[0].bar([j + i * width for j in range(len(shapes))], values, width,
                    label=name + (" (torch)" if name in torch_names else ""), hatch="//" if name in torch_names else None)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], [f"N={s[0]} D={s[1]}\nK={s[2]}" for s in shapes])
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("time / own framework's matmul floor")
    axes[0].set_title(f"bf16 fwd+bwd, {payload['machine'].get('nvidia_smi', payload['machine']['device'])[:40]}")
    axes[0].legend(fontsize=7)
    memory = parts.get("lmhead", {}).get("memory_vs_n", [])
    for name in ("chunked", "optax_jax_grad", "floor"):
        points = [(r["n"], r["temp_bytes"] / 2**30) for r in memory if r["variant"] == name and "temp_bytes" in r]
        if points:
            axes[1].plot(*zip(*points), marker="o", label=name)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("N (rows)")
    axes[1].set_ylabel("XLA temp (GiB)")
    axes[1].set_title("Memory beyond inputs and outputs vs N")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

def summary_markdown(payload: dict) -> str:
    from .. import common

    info = payload["machine"]
    out = [f"# GPU proof{' (quick)' if payload.get('quick') else ''}\n",
           common.stamp_markdown(info, payload["command"]),
           f"GPU: {info.get('nvidia_smi', info['device'])}. Versions: "
           + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()) + "\n"]
    parts = payload["parts"]
    if "lmhead" in parts:
        out.append("## LM head, bf16, forward + backward w.r.t. x and W (JAX)\n")
        out.append("Round-robin timing in one process (10 rounds after one warm-up); × floor is to the "
                   "three matrix products measured in the same run; temp is XLA's memory_analysis "
                   "(memory beyond inputs and outputs).\n")
        rows = []
        for r in parts["lmhead"].get("results", []):
            if "median_s" not in r:
                rows.append([tuple(r["shape"]), r["variant"], "error: " + r["error"][:80], "", "", ""])
                continue
            rows.append([tuple(r["shape"]), r["variant"], f"{r['median_s']*1e3:.2f} ms",
                         f"{r['ratio_to_floor']:.2f}" if r.get("ratio_to_floor") else "",
                         f"{r['temp_bytes']/2**30:.2f} GiB", f"{r['compile_s']:.1f} s"])
        out.append(common.table(["shape (N, D, K)", "variant", "median", "× floor", "temp", "compile"], rows))
        for r in parts["lmhead"].get("results", []):
            if r["variant"] == "chunked" and "median_s" in r:
                extra = []
                if "device_peak_bytes" in r:
                    extra.append(f"device peak {r['device_peak_bytes']/2**30:.2f} GiB in a fresh process, "
                                 f"{r.get('peak_beyond_inputs_outputs_bytes', 0)/2**30:.2f} GiB beyond inputs and outputs")
                if "result_devices" in r:
                    extra.append(f"results on {', '.join(r['result_devices'])}, host transfers in the "
                                 f"compiled program: {len(r.get('host_transfers_in_hlo', []))}")
                if "agreement_vs_naive" in r:
                    a = r["agreement_vs_naive"]
                    extra.append(f"relative difference vs naive jax.grad: loss {a['loss']:.1e}, "
                                 f"dx {a['dx']:.1e}, dW {a['dW']:.1e}")
                out.append(f"- chunked at {tuple(r['shape'])}: " + "; ".join(extra) + "\n")
        out.append("Anchors measured elsewhere (not re-run): "
                   + "; ".join(f"{k}: {v}" for k, v in ANCHORS.items()) + ".\n")
        out.append(_memory_markdown(parts["lmhead"].get("memory_vs_n", [])))
        out.append(_check_values_markdown(parts["lmhead"].get("check_values")))
    if "torch" in parts:
        out.append("## Torch fused kernels at the same shapes (bf16, forward + backward w.r.t. x and W)\n")
        rows = []
        for r in parts["torch"].get("results", []):
            if "median_ms" in r:
                rows.append([tuple(r["shape"]), r["variant"], f"{r['median_ms']:.2f} ms",
                             f"{r['peak_beyond_bytes']/2**30:.2f} GiB"])
            else:
                rows.append([tuple(r["shape"]), r["variant"], "error: " + r.get("error", "")[:100], ""])
        out.append(common.table(["shape (N, D, K)", "variant", "median (CUDA events)",
                                 "peak beyond inputs and grads"], rows))
        if "error_tail" in parts["torch"]:
            out.append("```\n" + parts["torch"]["error_tail"][-800:] + "\n```\n")
        if parts["torch"].get("skipped"):
            out.append(f"Skipped: {parts['torch']['skipped']}.\n")
    if "lmhead" in parts and "torch" in parts:
        out.append(side_by_side_markdown(parts["lmhead"].get("results", []), parts["torch"].get("results", [])))
    if "fit" in parts and "results" in parts["fit"]:
        from ..suites import fit as suite_fit

        out.append(suite_fit.markdown(parts["fit"]))
    if "search" in parts and "results" in parts["search"]:
        from ..suites import search as suite_search

        out.append(suite_search.markdown(parts["search"]))
    if "sparse" in parts and "results" in parts["sparse"]:
        from ..suites import sparse as suite_sparse

        out.append(suite_sparse.markdown(parts["sparse"]))
    if "probe" in parts and "results" in parts["probe"]:
        from . import probe

        out.append(probe.markdown(parts["probe"]))
    if "penalties" in parts and "fits" in parts["penalties"]:
        from ..suites import penalties as suite_penalties

        out.append(suite_penalties.markdown(parts["penalties"]))
    if "tests" in parts:
        t = parts["tests"]
        out.append(f"## Test suite on the device\n\n`{t.get('command', '')}` with JAX_PLATFORMS="
                   f"{t.get('JAX_PLATFORMS', '')}: **{t.get('summary', '')}** (return code "
                   f"{t.get('returncode')}, {t.get('seconds', 0):.0f} s).\n")
        if t.get("failures"):
            out.append("\n".join(f"- `{line[:200]}`" for line in t["failures"]) + "\n")
    for name, entry in parts.items():
        if entry.get("returncode") not in (0, None) and name != "tests":
            out.append(f"Part `{name}` ended with return code {entry['returncode']}.\n")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
