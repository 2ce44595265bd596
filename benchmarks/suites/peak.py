"""Peak memory of one variant in a fresh process: ``python -m benchmarks.suites.peak VARIANT MODE N D K DTYPE``.

Prints JSON: the highest resident set size (VmRSS, sampled every millisecond by a thread while
the compiled program runs three times) minus the resident set before the runs, after the inputs
exist and the program is compiled; on a GPU also the device's peak bytes in use.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import jax

from .. import variants


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    variant, mode, n, d, k, dtype = sys.argv[1:7]
    x, w, y = variants.host_inputs(int(n), int(d), int(k), dtype)
    compiled = variants.build(variant, mode).lower(x, w, y).compile()
    jax.block_until_ready((x, w, y))
    baseline = rss_bytes()
    peak = [baseline]
    running = threading.Event()
    running.set()

    def sample():
        while running.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(3):
        jax.block_until_ready(compiled(x, w, y))
    running.clear()
    sampler.join()
    out = {"peak_rss_growth_bytes": peak[0] - baseline}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = stats["peak_bytes_in_use"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
