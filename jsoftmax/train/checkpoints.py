"""A run's checkpoints: what identifies the run, and saving and resuming its state.

A run is named by a fingerprint of everything that changes its objective or its path: the data
(X, labels, weights, standardisation, validation data) by value, and every option (L2, label
smoothing, ``ignore_index``, batch size, seed, patience, the params' shapes and dtype, the solver,
an optax transformation by what its functions close over). Its files carry the fingerprint's
first 16 hex digits, so runs sharing a folder never prune or resume each other's
(``jsoftmax.io.files``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..io import files


class RunCheckpoints(NamedTuple):
    folder: str
    every: int
    fingerprint: str

    @classmethod
    def of_run(cls, folder: str, every: int, data, validation, params, *, ignore_index: int,
               batch_size: int | None, seed: int, patience: int | None, solver: str | None,
               optimizer: Any) -> RunCheckpoints:
        """The checkpoints of the run these inputs and options define."""
        arrays = (data.X, data.labels, data.sample_weight) + (() if data.affine is None else tuple(data.affine))
        arrays += () if validation is None else (validation.X, validation.labels)
        fingerprint = files.fingerprint(arrays, {
            "l2": files.describe(data.l2), "label_smoothing": files.describe(data.smoothing),
            "ignore_index": ignore_index, "batch_size": batch_size,
            "seed": seed if batch_size is not None else None, "patience": patience,
            "params": [list(params.W.shape), None if params.b is None else list(params.b.shape),
                       jnp.dtype(params.W.dtype).name],
            "solver": solver, "optimizer": None if optimizer is None else files.describe(optimizer),
            "standardized": data.affine is not None, "validation": validation is not None})
        return cls(folder, every, fingerprint)

    def save(self, step: int, state, meta: dict) -> None:
        files.save_checkpoint(self.folder, step, state, dict(meta, fingerprint=self.fingerprint),
                                    run=files.run_id(self.fingerprint))

    def resume(self, like):
        """This run's newest checkpoint: its state (in the structure of ``like``) and metadata."""
        loaded = files.load_latest_checkpoint(self.folder, like, run=files.run_id(self.fingerprint),
                                                    fingerprint=self.fingerprint)
        if loaded is None:
            raise FileNotFoundError(f"`resume=True`: no checkpoint found in {self.folder}")
        tree, meta = loaded
        if meta.get("fingerprint") != self.fingerprint:  # (a 64-bit prefix shared by chance)
            raise files.CheckpointMismatchError(
                f"the checkpoint in {self.folder} was written for other data or options: resuming "
                "would continue a different problem. Use another folder, or resume=False.")
        return jax.tree_util.tree_map(jnp.asarray, tree), meta
