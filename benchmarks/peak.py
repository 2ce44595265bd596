"""Peak memory of one variant in a fresh process: ``python -m benchmarks.peak VARIANT MODE N D K DTYPE``.

Prints JSON: the growth of the process's peak resident set (ru_maxrss) over one run after the
inputs exist, and on a GPU the device's peak bytes in use.
"""

from __future__ import annotations

import json
import resource
import sys

import jax

from . import variants


def main() -> None:
    variant, mode, n, d, k, dtype = sys.argv[1:7]
    x, w, y = variants.inputs(int(n), int(d), int(k), dtype)
    fn = variants.build(variant, mode)
    compiled = fn.lower(x, w, y).compile()
    jax.block_until_ready((x, w, y))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    jax.block_until_ready(compiled(x, w, y))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_growth_bytes": (after - before) * 1024}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = stats["peak_bytes_in_use"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
