"""The ``jsoftmax`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _parse_sizes(text: str) -> tuple[tuple[int, int, int], ...]:
    try:
        sizes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must look like 16x5x3,64x10x7; got {text!r}") from None
    if any(len(s) != 3 or min(s) < 1 or s[2] < 2 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"each size is NxDxK with N, D >= 1 and K >= 2; got {text!r}"
        )
    return sizes


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import _verify

    reports = _verify.verify_grid(
        sizes=args.sizes, dtypes=tuple(args.dtype), seed=args.seed,
        option_sets=tuple(args.options), label_kinds=tuple(args.labels),
    )
    passed = all(r.passed for r in reports)
    summary = _verify.summarise(reports)
    if args.json:
        payload = {"passed": passed, "summary": summary}
        if args.verbose:
            payload["reports"] = [r.to_dict() for r in reports]
        print(json.dumps(payload, indent=2))
    else:
        if args.verbose:
            for report in reports:
                print(report, end="\n\n")
        print(
            f"Checked the derivation on {len(reports)} random problems "
            f"(sizes NxDxK {', '.join('x'.join(map(str, s)) for s in args.sizes)}; "
            f"option sets {', '.join(args.options)}; labels {', '.join(args.labels)}); "
            "worst error per step:"
        )
        print(_verify.format_table(summary))
        failed = [r for r in reports if not r.passed]
        print(f"\n{'ALL PASSED' if passed else f'{len(failed)} PROBLEM(S) FAILED'}")
        for report in failed:
            print(report)
    return 0 if passed else 1


def build_parser() -> argparse.ArgumentParser:
    from . import _verify

    parser = argparse.ArgumentParser(
        prog="jsoftmax", description="Softmax regression in JAX with a verified analytic gradient."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    verify = sub.add_parser(
        "verify", help="check each step of the gradient derivation against jax.grad",
        description="Run check_gradient over a grid of random problems and print the worst "
        "error per step. Exit code 0 only if every row passes.",
    )
    verify.add_argument("--sizes", type=_parse_sizes, default=_verify.DEFAULT_SIZES,
                        help="comma-separated NxDxK sizes, cycled over the grid (default: %(default)s)")
    verify.add_argument("--dtype", nargs="+", choices=["float64", "float32", "bfloat16"],
                        default=["float64", "float32"])
    verify.add_argument("--options", nargs="+", choices=list(_verify.OPTION_SETS),
                        default=list(_verify.OPTION_SETS), help="option sets to check")
    verify.add_argument("--labels", nargs="+", choices=["int", "soft"], default=["int", "soft"])
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--verbose", "-v", action="store_true", help="every problem's table")
    verify.set_defaults(func=_cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
