"""The sparse layout's two costs, time and memory:
``python -m benchmarks.studies.sparse_layout {products,memory} [problem]``.

``products``: the two sparse products of a gradient, by layout. At the rcv1 shape of
``benchmarks/sparse_data.py`` (100,000 × 50,000, ~80 stored per row, K = 50, float64) times, in
one process, min of 3 after a warm-up:

- scipy's CSR products (what scikit-learn runs), X·W and Xᵀ·dZ;
- JAX's BCOO and BCSR (whole matrix) for X·W, and Xᵀ·dZ through a BCSR of Xᵀ;
- jsoftmax's layout: X·W and Xᵀ·dZ chunk by chunk (a BCSR window per chunk, and the chunk's
  transpose gathered through its column order), the same transposed product from each chunk's
  transpose stored whole (12 bytes per entry: the layout before the order), and as a
  scatter-add into dW (what one would run with neither).

Writes ``benchmarks/results/sparse-products-<platform>.{json,md}``: the measurement behind
BCSR and the gathered transpose in ``jsoftmax/_sparse.py``.

``memory [problem]``: where a sparse Newton-CG fit's memory goes. Lays out the seeded
rcv1-shaped CSR (or ``problem``'s) as a fit does and reports the layout's bytes (X's arrays,
read in place where the CPU device can adopt them, and the per-chunk column order), the CSR's
own bytes, the D × K weights, and XLA's ``memory_analysis`` of the compiled Newton-CG segment
(arguments, outputs, donated aliases, temporaries). Writes
``benchmarks/results/sparse-memory-<platform>.md``.
"""

from __future__ import annotations

import sys
import time

from .. import common


def _best(fn, *args, repeats: int = 3) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def products() -> int:
    """The products part (see the module doc)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.experimental import sparse as jsparse

    from jsoftmax import _api, _engine, _layouts
    from jsoftmax._compat import enable_x64

    from ..sparse_data import SHAPES, make

    info = common.machine()
    X, y = make("rcv1")
    n, d, _, k = SHAPES["rcv1"]
    rng = np.random.default_rng(0)
    rows = []
    with enable_x64():
        W = rng.standard_normal((d, k))
        dZ = rng.standard_normal((n, k))
        start = time.perf_counter()
        X @ W
        scipy_scores = time.perf_counter() - start
        start = time.perf_counter()
        X.T @ dZ
        scipy_transposed = time.perf_counter() - start
        rows.append(["scipy CSR (scikit-learn)", scipy_scores, scipy_transposed])
        Wd, dZd = jnp.asarray(W), jnp.asarray(dZ)
        bcoo = jsparse.BCOO.from_scipy_sparse(X)
        bcsr = jsparse.BCSR.from_scipy_sparse(X)
        bcsr_t = jsparse.BCSR.from_scipy_sparse(X.T.tocsr())
        product = jax.jit(lambda A, B: A @ B)
        rows.append(["JAX BCOO, whole matrix", _best(product, bcoo, Wd),
                     _best(jax.jit(lambda A, B: (B.T @ A).T), bcoo, dZd)])
        rows.append(["JAX BCSR, whole matrix (Xᵀ as its own BCSR)", _best(product, bcsr, Wd),
                     _best(product, bcsr_t, dZd)])
        params = _api.Params(Wd, None)
        problem, _, plan = _api.prepare(params, X, jnp.asarray(y))
        layout = problem.X

        @jax.jit
        def chunked_scores(layout, W):
            return _engine.all_scores(W, None, layout)

        @jax.jit
        def chunked_transposed(layout, H):
            def body(G, start, chunk):
                return G + chunk.transposed_product(lax.dynamic_slice_in_dim(H, start, chunk.shape[0]))

            return _layouts.over_row_blocks(layout, body, jnp.zeros((d, k), H.dtype))

        @jax.jit
        def scattered(layout, H):
            def body(G, start, chunk):
                # The chunk's rows as (row, column, value) entries, added into dW by column.
                local = chunk.rows
                counts = jnp.diff(local.indptr)
                row_of = jnp.repeat(jnp.arange(counts.shape[0]), counts, total_repeat_length=local.data.shape[0])
                used = jnp.arange(local.data.shape[0]) < local.indptr[-1]
                part = lax.dynamic_slice_in_dim(H, start, counts.shape[0], axis=0)
                values = jnp.where(used, local.data, 0)[:, None] * part[row_of]
                return G.at[local.indices].add(values)

            return _layouts.over_row_blocks(layout, body, jnp.zeros((d, k), H.dtype))

        # The layout before the column order: each chunk's transpose stored whole (values and
        # row ids, padded to one size), read by the same CSR product.
        c = plan.chunk_rows
        chunks = -(-n // c)
        parts = [X[i * c:(i + 1) * c].T.tocsr() for i in range(chunks)]
        width = max(p.nnz for p in parts)
        t_data = np.stack([np.pad(p.data, (0, width - p.nnz)) for p in parts])
        t_rows = np.stack([np.pad(p.indices, (0, width - p.nnz)).astype(np.int32) for p in parts])
        t_ptr = np.stack([p.indptr.astype(np.int32) for p in parts])
        padded = jnp.zeros((chunks * c, k)).at[:n].set(dZd)

        @jax.jit
        def stored_transposed(t_data, t_rows, t_ptr, H):
            def body(i, G):
                chunk = jsparse.BCSR((t_data[i], t_rows[i], t_ptr[i]), shape=(d, c))
                return G + chunk @ lax.dynamic_slice_in_dim(H, i * c, c, axis=0)

            return lax.fori_loop(0, chunks, body, jnp.zeros((d, k), H.dtype))

        stored = _best(stored_transposed, t_data, t_rows, t_ptr, padded)
        del t_data, t_rows, t_ptr
        rows.append([f"jsoftmax layout, chunks of {plan.chunk_rows} rows (transpose gathered through the column order)",
                     _best(chunked_scores, layout, Wd), _best(chunked_transposed, layout, dZd)])
        rows.append(["the same chunks with each transpose stored whole (the layout before the order)", float("nan"),
                     stored])
        rows.append(["jsoftmax layout, Xᵀ·dZ as a scatter-add (no transpose)", float("nan"),
                     _best(scattered, layout, dZd)])
    payload = {"machine": info, "command": "python -m benchmarks.studies.sparse_layout products",
               "shape": [n, d, k], "nnz": int(X.nnz),
               "results": [{"layout": r[0], "scores_s": r[1], "transposed_s": r[2]} for r in rows]}
    table = common.table(["layout", "X·W", "Xᵀ·dZ"],
                         [[r[0], "" if r[1] != r[1] else f"{r[1] * 1e3:.0f} ms", f"{r[2] * 1e3:.0f} ms"]
                          for r in rows])
    md = (f"# Sparse products at the rcv1 shape ({n} × {d}, {X.nnz:,} stored, K = {k}, float64)\n\n"
          + common.stamp_markdown(info, payload["command"]) + "\n" + table)
    common.publish(f"sparse-products-{info['platform']}", payload, md)
    return 0


def run_memory(name: str = "rcv1") -> dict:
    import jax
    import jax.numpy as jnp

    from jsoftmax import Params, _api
    from jsoftmax.train import newton_cg
    from jsoftmax.train.objective import Data
    from jsoftmax._compat import enable_x64

    from ..sparse_data import SHAPES, make

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


def markdown_memory(r: dict) -> str:
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
    if not argv or argv[0] not in ("products", "memory"):
        print("usage: python -m benchmarks.studies.sparse_layout {products,memory} [problem]", file=sys.stderr)
        return 2
    if argv[0] == "products":
        return products()
    name = argv[1] if len(argv) > 1 else "rcv1"
    return common.report("sparse-memory", "Memory of a sparse Newton-CG fit",
                         "python -m benchmarks.studies.sparse_layout memory" + (f" {name}" if len(argv) > 1 else ""),
                         run_memory(name), markdown_memory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
