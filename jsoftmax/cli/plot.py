"""PNG reports with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def training_plot(path: str | os.PathLike, losses: Sequence[float], confusion: Sequence[Sequence[int]],
                  classes: Sequence, *, title: str = "", xlabel: str = "iteration") -> Path:
    """Loss curve (left) and confusion matrix (right) in one PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confusion = np.asarray(confusion)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(np.arange(len(losses)), losses, lw=1.5)
    left.set_xlabel(xlabel)
    left.set_ylabel("training risk")
    left.set_yscale("log")
    left.set_title("Loss curve")
    left.grid(alpha=0.3)
    image = right.imshow(confusion, cmap="Blues")
    labels = [str(c) for c in classes]
    right.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0)
    right.set_yticks(range(len(labels)), labels)
    right.set_xlabel("predicted")
    right.set_ylabel("true")
    right.set_title("Confusion matrix")
    if confusion.size <= 400:
        threshold = confusion.max() / 2
        for (i, j), v in np.ndenumerate(confusion):
            right.text(j, i, str(v), ha="center", va="center", fontsize=7,
                       color="white" if v > threshold else "black")
    fig.colorbar(image, ax=right, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)  # left only when the write or the rename failed
    return path
