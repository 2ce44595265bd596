"""Run benchmark suites and write JSON + markdown under benchmarks/results/.

    python -m benchmarks.run                 # every suite at full size
    python -m benchmarks.run --suite fit     # one suite (hot, memory, fit, penalties, search, sparse, scaling)
    python -m benchmarks.run --quick         # smaller sizes (a smoke run)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Compile times are reported as measured: the suites run without jsoftmax's persistent caches
# (the warm-cache first call is benchmarks/studies/first_call.py's). A JSOFTMAX_CACHE_DIR you set wins.
os.environ.setdefault("JSOFTMAX_CACHE_DIR", "off")

from . import common  # noqa: E402  (after the cache setting: it may import jsoftmax)

SUITES = ("hot", "memory", "fit", "penalties", "search", "sparse", "scaling")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=SUITES, default=list(SUITES))
    parser.add_argument("--quick", action="store_true", help="smaller problem sizes")
    parser.add_argument("--tag", default=None, help="suffix for result files (default: the platform)")
    args = parser.parse_args(argv)
    info = common.machine()
    tag = args.tag or info["platform"]
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    for name in args.suite:
        suite = importlib.import_module(f"benchmarks.suites.{name}")
        payload = suite.run(quick=args.quick)
        payload.update(machine=info, command=command.strip(), quick=args.quick)
        md = f"# Benchmark `{name}`\n\n" + common.stamp_markdown(info, command.strip()) + "\n" + suite.markdown(payload)
        json_path, md_path = common.write_results(f"{name}-{tag}{'-quick' if args.quick else ''}", payload, md)
        print(md)
        print(f"wrote {json_path} and {md_path}")
    if {"hot", "memory"} & set(args.suite):
        from .plot import make_plot

        png = make_plot(f"{tag}{'-quick' if args.quick else ''}")
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
