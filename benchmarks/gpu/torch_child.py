"""Liger-Kernel and CCE fused linear cross-entropy on the same shapes (a child of ``benchmarks.gpu``).

Each variant: bf16 inputs x (N, D) and a head (K, D) (torch's layout), integer targets, the mean
loss, ``backward()`` to x and the head; median of 10 timed runs after 2 warm-ups (CUDA events);
peak memory is ``torch.cuda.max_memory_allocated`` during one run minus what was allocated before
it, minus the gradients it returns (so: memory beyond inputs and outputs, like XLA's temp bytes).
Torch is only ever imported here, in its own process.
"""

from __future__ import annotations

import statistics


def _variants(softcap: float):
    import torch

    out = {}

    def floor(x, head, y):
        z = x @ head.T
        return z, z.T @ x, z @ head  # the three products, forward and both backward

    out["torch_floor"] = ("no_grad", floor)
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        liger_cap = LigerFusedLinearCrossEntropyLoss(softcap=softcap)
        liger_accuracy = LigerFusedLinearCrossEntropyLoss(return_token_accuracy=True)
        out["liger_flce"] = ("grad", lambda x, head, y: liger(head, x, y))
        out[f"liger_flce_softcap{softcap:g}"] = ("grad", lambda x, head, y: liger_cap(head, x, y))
        out["liger_flce_accuracy"] = ("grad", lambda x, head, y: liger_accuracy(head, x, y).loss)
    except Exception as err:  # noqa: BLE001 - recorded, the other variants still run
        out["liger_flce"] = ("error", f"{type(err).__name__}: {err}")
    try:
        from cut_cross_entropy import linear_cross_entropy

        out["cce"] = ("grad", lambda x, head, y: linear_cross_entropy(x, head, y))
        out[f"cce_softcap{softcap:g}"] = ("grad", lambda x, head, y: linear_cross_entropy(x, head, y, softcap=softcap))
    except Exception as err:  # noqa: BLE001
        out["cce"] = ("error", f"{type(err).__name__}: {err}")
    out["torch_naive"] = ("grad", lambda x, head, y: torch.nn.functional.cross_entropy((x @ head.T).float(), y))
    return out


def run(shapes, softcap: float = 30.0) -> dict:
    try:
        import torch
    except ImportError:
        return {"results": [], "skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"results": [], "skipped": "no CUDA device for torch"}
    device = torch.device("cuda")
    results = []
    for n, d, k in shapes:
        generator = torch.Generator(device=device).manual_seed(0)
        x0 = torch.randn(n, d, device=device, dtype=torch.bfloat16, generator=generator)
        head0 = (torch.randn(k, d, device=device, generator=generator) / d**0.5).to(torch.bfloat16)
        y = torch.randint(0, k, (n,), device=device, generator=generator)
        for name, (kind, fn) in _variants(softcap).items():
            row = {"shape": [n, d, k], "variant": name}
            if kind == "error":
                row["error"] = fn[:300]
                results.append(row)
                print(f"{(n, d, k)} {name}: {row['error']}", flush=True)
                continue
            x = x0.clone().requires_grad_(kind == "grad")
            head = head0.clone().requires_grad_(kind == "grad")

            def once():
                if kind == "grad":
                    x.grad = head.grad = None
                    fn(x, head, y).backward()
                else:
                    with torch.no_grad():
                        fn(x, head, y)

            try:
                for _ in range(2):
                    once()
                torch.cuda.synchronize()
                times = []
                for _ in range(10):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    once()
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                x.grad = head.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                once()
                torch.cuda.synchronize()
                grads = 2 * (n * d + k * d) if kind == "grad" else 0
                row.update(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                           peak_beyond_bytes=torch.cuda.max_memory_allocated() - before - grads)
                print(f"{(n, d, k)} {name:12s} {row['median_ms']:9.2f} ms, peak beyond "
                      f"{row['peak_beyond_bytes']/2**30:.2f} GiB", flush=True)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory for the naive one
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                print(f"{(n, d, k)} {name}: {row['error']}", flush=True)
            finally:
                del x, head
                torch.cuda.empty_cache()
            results.append(row)
    return {"results": results}
