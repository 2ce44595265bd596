"""Shared benchmark utilities: timing, machine stamp, result files."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Where and with what the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": devices[0].platform,
        "device": devices[0].device_kind,
        "n_devices": len(devices),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }


def block(x):
    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median and spread of ``repeats`` calls after ``warmup`` calls (results blocked on)."""
    for _ in range(warmup):
        block(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        samples.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": repeats,
    }


def settle(seconds: float = 1.0) -> None:
    """Let idle worker threads park before the next timing. After scikit-learn's default-thread
    fits, OpenMP and OpenBLAS threads spin for a while and take cores from whatever runs next: a
    digits fit of ours took 28 ms right after them and 18 ms one second later (2-core CPU)."""
    time.sleep(seconds)


def first_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call, compilation included."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under benchmarks/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def publish(name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write the results (see :func:`write_results`) and print the markdown and where it went."""
    json_path, md_path = write_results(name, payload, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")


def report(name: str, title: str, command: str, results: dict[str, Any],
           render: Callable[[dict[str, Any]], str]) -> int:
    """Publish one benchmark run as ``benchmarks/results/<name>-<platform>.{json,md}``: the
    machine, the command and ``results``, rendered under ``title`` by ``render(payload)``."""
    info = machine()
    payload = {"machine": info, "command": command, **results}
    md = f"# {title}\n\n" + stamp_markdown(info, command) + "\n" + render(payload)
    publish(f"{name}-{info['platform']}", payload, md)
    return 0


def stamp_markdown(info: dict[str, Any], command: str) -> str:
    return (
        f"Machine: {info['cpu']} ({info['cpu_count']} cores), {info['platform']} "
        f"{info['device']} x{info['n_devices']}; Python {info['python']}, jax {info['jax']}; "
        f"{info['date']}.\n\nCommand: `{command}`\n"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
