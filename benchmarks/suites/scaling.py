"""Scaling with device count: per-device memory and time, data- and class-parallel.

Each device count runs in a fresh process (forced host devices on CPU must be set before jax
starts). On a 2-core CPU the forced devices share the same two cores: the memory columns show
the semantics (per-device bytes falling as 1/devices where the design says so); the times show
overhead, not speed-up.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax

from .. import common

COUNTS = (1, 2, 4, 8)


def run(quick: bool = False) -> dict:
    results = []
    for count in COUNTS:
        if jax.devices()[0].platform != "cpu" and count > len(jax.devices()):
            break
        done = subprocess.run([sys.executable, "-m", "benchmarks.suites.scaling_worker", str(count), "1" if quick else "0"],
                              capture_output=True, text=True, timeout=900, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{count} devices: class-parallel args {row['class']['argument_bytes']/2**20:.1f} MiB/device, "
              f"data-parallel {row['data']['median_s']*1e3:.0f} ms, class {row['class']['median_s']*1e3:.0f} ms", flush=True)
    return {"suite": "scaling", "results": results}


def markdown(payload: dict) -> str:
    r0 = payload["results"][0]
    headers = ["devices", "mode", "arguments / device", "outputs / device", "temp / device", "time (median)"]
    rows = []
    for r in payload["results"]:
        for mode in ("data", "class"):
            m = r[mode]
            rows.append([r["devices"], mode, f"{m['argument_bytes']/2**20:.1f} MiB", f"{m['output_bytes']/2**20:.1f} MiB",
                         f"{m['temp_bytes']/2**20:.1f} MiB", f"{m['median_s']*1e3:.0f} ms"])
    note = ("On CPU the devices are forced host devices sharing the machine's cores: memory shows the "
            "semantics, times show overhead, not speed-up.\n\n" if r0["platform"] == "cpu" else "")
    return (f"## Scaling: value and gradient, N={r0['n']}, D={r0['d']}, K={r0['k']}, float32\n\n" + note
            + common.table(headers, rows))
