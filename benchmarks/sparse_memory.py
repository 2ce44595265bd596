"""Where a sparse Newton-CG fit's memory goes: ``python -m benchmarks.sparse_memory [problem]``.

Lays out the seeded rcv1-shaped CSR (``benchmarks/sparse_data.py``) as a fit does and reports
the layout's bytes (X's arrays, read in place where the CPU device can adopt them, and the
per-chunk column order), the CSR's own bytes, the D × K weights, and XLA's ``memory_analysis``
of the compiled Newton-CG segment (arguments, outputs, donated aliases, temporaries). Writes ``benchmarks/results/sparse-memory-<platform>.md``.
"""

from __future__ import annotations

import sys

from . import common


def run(name: str = "rcv1") -> dict:
    import jax
    import jax.numpy as jnp

    from jsoftmax import Params, _api
    from jsoftmax.train import newton_cg
    from jsoftmax.train.objective import Data
    from jsoftmax._compat import enable_x64

    from .sparse_data import SHAPES, make

    X, y = make(name)
    n, d, _, k = SHAPES[name]
    with enable_x64():
        params = Params(jnp.zeros((d, k)), jnp.zeros(k))
        l2 = 1.0 / n
        problem, spec, plan = _api.prepare(params, X, y, l2=l2, in_place=True)  # as a fit lays it out
        layout = problem.X
        data = Data(layout, problem.labels, problem.sample_weight, l2, 0.0, None)
        carry = newton_cg.start(params, data, spec=spec, plan=plan, max_iter=1000)
        compiled = newton_cg.segment.lower(carry, 1000, 1e-6, data, spec=spec, plan=plan,
                                           max_cg=newton_cg.max_cg(params)).compile()
        analysis = compiled.memory_analysis()
    return {"problem": name, "shape": [n, d, k], "nnz": int(X.nnz),
            "csr_bytes": int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes),
            "weights_bytes": d * k * 8,
            "layout_bytes": int(sum(a.nbytes for a in jax.tree_util.tree_leaves(layout))),
            "adopted_bytes": sum(device.nbytes for device, host in ((layout.data, X.data), (layout.indices, X.indices))
                                 if _reads_in_place(device, host)),
            "chunk_rows": layout.chunk_rows,
            **{key: int(getattr(analysis, f"{key}_size_in_bytes")) for key in ("argument", "output", "alias", "temp")}}


def _reads_in_place(device, host) -> bool:
    """Whether a device array is (part of) the host array's own buffer."""
    start = host.ctypes.data
    return start <= device.unsafe_buffer_pointer() < start + host.nbytes


def markdown(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    budget = 3 * (r["csr_bytes"] + r["weights_bytes"])
    owned = r["argument"] + r["output"] - r["alias"] + r["temp"] - r["adopted_bytes"]
    rows = [["CSR (data, indices, row pointers)", mib(r["csr_bytes"])],
            ["D × K float64 weights", mib(r["weights_bytes"])],
            ["3 × (CSR + weights): the issue's budget", mib(budget)],
            [f"layout on the device (X's arrays, per-chunk column order and pointers; {r['chunk_rows']} rows per chunk)",
             mib(r["layout_bytes"])],
            ["of which the caller's CSR arrays, read in place (not a copy)", mib(r["adopted_bytes"])],
            ["compiled Newton-CG segment: arguments (layout + carry)", mib(r["argument"])],
            ["outputs (the carry)", mib(r["output"])],
            ["of which aliased to donated arguments", mib(r["alias"])],
            ["temporaries", mib(r["temp"])],
            ["what the fit adds: layout not read in place + carry + temporaries",
             f"{mib(owned)} (**{owned / (r['csr_bytes'] + r['weights_bytes']):.2f}×** CSR + W)"]]
    n, d, k = r["shape"]
    return (f"## {r['problem']}-shaped CSR ({n}×{d}, K={k}, {r['nnz']:,} stored), float64\n\n"
            + common.table(["what", "bytes"], rows))


def main(argv: list[str]) -> int:
    name = argv[0] if argv else "rcv1"
    return common.report("sparse-memory", "Memory of a sparse Newton-CG fit",
                         "python -m benchmarks.sparse_memory" + (f" {name}" if argv else ""), run(name), markdown)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
