"""Memory scaling: temp bytes of the compiled forward+backward as N grows 8× at K=32000.

The chunked op's scratch should stay flat (its blocks do not depend on N); optax's and the
naive autodiff's grow with the N×K logits. Only compiled (no run) for the autodiff variants,
since memory_analysis() is exact without running; the chunked op is also timed.
"""

from __future__ import annotations

from .. import common, variants

D, K = 1024, 32000
N_VALUES = (2048, 4096, 8192, 16384)  # at least two 1024-row chunks each
QUICK = (256, 512, 1024, 2048)


def run(quick: bool = False) -> dict:
    d, k = (256, 8000) if quick else (D, K)
    results = []
    for n in QUICK if quick else N_VALUES:
        x, w, y = variants.inputs(n, d, k, "float32")
        row = {"n": n, "d": d, "k": k}
        for variant in ("chunked", "optax_jax_grad", "naive_jax_grad", "reference"):
            compiled = variants.build(variant, "forward_backward").lower(x, w, y).compile()
            row[f"{variant}_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
            if variant == "chunked":
                row["chunked_time"] = common.timed(lambda c=compiled: c(x, w, y), repeats=3)
        row["chunked_over_optax"] = row["chunked_temp_bytes"] / row["optax_jax_grad_temp_bytes"]
        results.append(row)
        print(f"N={n}: chunked temp {row['chunked_temp_bytes']/2**20:.0f} MiB, optax "
              f"{row['optax_jax_grad_temp_bytes']/2**20:.0f} MiB ({row['chunked_over_optax']:.3f}), "
              f"chunked {row['chunked_time']['median_s']*1e3:.0f} ms", flush=True)
    first, last = results[0]["chunked_temp_bytes"], results[-1]["chunked_temp_bytes"]
    return {"suite": "memory", "results": results, "chunked_growth_over_8x_n": last / first}


def markdown(payload: dict) -> str:
    r0 = payload["results"][0]
    headers = ["N", "chunked temp", "optax + jax.grad temp", "naive jax.grad temp", "reference temp",
               "chunked / optax", "chunked time"]
    rows = [[r["n"], f"{r['chunked_temp_bytes']/2**20:.0f} MiB",
             f"{r['optax_jax_grad_temp_bytes']/2**20:.0f} MiB", f"{r['naive_jax_grad_temp_bytes']/2**20:.0f} MiB",
             f"{r['reference_temp_bytes']/2**20:.0f} MiB", f"{r['chunked_over_optax']:.3f}",
             f"{r['chunked_time']['median_s']*1e3:.0f} ms"] for r in payload["results"]]
    return (f"## Memory vs N (D={r0['d']}, K={r0['k']}, float32, forward+backward)\n\n"
            + common.table(headers, rows)
            + f"\nChunked temp growth over the 8× range of N: {payload['chunked_growth_over_8x_n']:.3f}×.\n")
