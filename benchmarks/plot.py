"""PNG of the latest hot-path and memory results: time vs floor, memory vs N."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .common import RESULTS  # noqa: E402


def make_plot(tag: str) -> str | None:
    hot, mem = RESULTS / f"hot-{tag}.json", RESULTS / f"memory-{tag}.json"
    if not hot.exists() and not mem.exists():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if hot.exists():
        data = json.loads(hot.read_text())
        rows = [r for r in data["results"] if r["mode"] == "forward_backward" and "ratio_to_floor" in r]
        shapes = sorted({tuple(r["shape"]) for r in rows}, key=str)
        names = [v for v in ("floor", "chunked", "reference", "naive_jax_grad", "optax_jax_grad")
                 if any(r["variant"] == v for r in rows)]
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            values = [next((r["ratio_to_floor"] for r in rows if tuple(r["shape"]) == s and r["variant"] == name), 0)
                      for s in shapes]
            axes[0].bar([j + i * width for j in range(len(shapes))], values, width, label=name)
        axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))],
                           [f"N={s[0]} D={s[1]}\nK={s[2]} {s[3]}" for s in shapes])
        axes[0].axhline(1.0, color="k", lw=0.8)
        axes[0].set_ylabel("time / floor (forward+backward)")
        axes[0].set_title(f"Time vs the matmul floor ({data['machine']['device']})")
        axes[0].legend(fontsize=8)
    if mem.exists():
        data = json.loads(mem.read_text())
        ns = [r["n"] for r in data["results"]]
        for key, label in (("chunked", "jsoftmax chunked"), ("optax_jax_grad", "optax + jax.grad"),
                           ("naive_jax_grad", "naive jax.grad")):
            axes[1].plot(ns, [r[f"{key}_temp_bytes"] / 2**20 for r in data["results"]], "o-", label=label)
        axes[1].set_xscale("log", base=2)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("N (rows)")
        axes[1].set_ylabel("XLA temp memory (MiB)")
        r0 = data["results"][0]
        axes[1].set_title(f"Memory vs N (D={r0['d']}, K={r0['k']})")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"hot-memory-{tag}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
