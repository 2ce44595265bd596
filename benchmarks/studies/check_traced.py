"""Value checks inside a jitted training step: ``python -m benchmarks.studies.check_traced``.

A jitted SGD step on ``jsoftmax.linear_cross_entropy`` (bf16 inputs) compiled three ways in one
process — ``check_values=False``, the default ``check_values=True`` (inside ``jit`` the checks
are off unless ``JSOFTMAX_CHECK_TRACED=1``) and ``True`` with that switch on (a host callback
per check) — and timed round-robin (``benchmarks.gpu``'s ``_check_values_rate``, which the GPU
kit runs at the LM-head shape). Writes ``benchmarks/results/check-traced-<platform>.md``: the
steps per second of each and the host callbacks in each compiled step.
"""

from __future__ import annotations

import sys

from .. import common
from ..gpu import _check_values_markdown, _check_values_rate

SHAPE = (1024, 256, 4096)
STEPS = 10


def main(argv: list[str]) -> int:
    payload = _check_values_rate(quick=False, shape=SHAPE, steps=STEPS)
    return common.report("check-traced", "Value checks inside a jitted training step",
                         "python -m benchmarks.studies.check_traced", payload, _check_values_markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
