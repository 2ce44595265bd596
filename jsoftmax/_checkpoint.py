"""Atomic, code-free files: model and checkpoint storage.

Everything is an ``.npz`` read with ``allow_pickle=False`` (loading never runs code) plus a
JSON metadata string stored as a unicode array. Writes go to a temporary file in the target
folder, are flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on
POSIX and Windows), so a process killed at any moment leaves either the old file or the new
one, never half of one. Reading checks the zip CRCs, the format tag and every array's shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

META_KEY = "__meta__"


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and JSON ``meta`` to ``path`` atomically; returns the final path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    payload = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise TypeError(f"cannot store {name!r}: object arrays would need pickle")
    payload[META_KEY] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_npz(path: str | os.PathLike, *, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every array and the metadata of a file written by :func:`atomic_save_npz`.

    Raises ``FileNotFoundError`` if absent and ``ValueError`` naming the file for anything
    truncated, corrupt or not of this format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        # Own the file handle: np.load leaks it when the zip directory is unreadable.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}  # reads and CRC-checks all
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable jsoftmax {kind} file (truncated or corrupt?): {err}") from None
    if META_KEY not in arrays:
        raise ValueError(f"{path} is not a jsoftmax {kind} file: it has no metadata.")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise ValueError(f"{path} is not a jsoftmax {kind} file (kind={meta.get('kind')!r}).")
    return arrays, meta


# --- Training checkpoints ---------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that belongs to another problem (not a damaged file)."""


def fingerprint(arrays, options: dict[str, Any]) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes and of the JSON of ``options``.

    Arrays spread over several processes are fingerprinted by this process's shards (each
    process checks its own rows). ``None`` entries are recorded as absent.
    """
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=repr).encode())
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        shards = [array] if getattr(array, "is_fully_addressable", True) else [
            shard.data for shard in array.addressable_shards]
        for part in shards:
            values = np.ascontiguousarray(np.asarray(part))
            digest.update(f"{values.dtype.str}{values.shape}".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()

_CKPT = re.compile(r"^ckpt-(\d{9})\.npz$")


def save_checkpoint(folder: str | os.PathLike, step: int, state: Any, meta: dict[str, Any], keep: int = 2) -> Path:
    """Save the pytree ``state`` as checkpoint ``step`` in ``folder``; keep the last ``keep``."""
    folder = Path(folder)
    if folder.is_dir():  # temporary files of a writer that was killed mid-write
        for stale in folder.glob(".ckpt-*.tmp"):
            stale.unlink(missing_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    path = atomic_save_npz(folder / f"ckpt-{step:09d}.npz", arrays, dict(meta, kind="checkpoint", step=step))
    for old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``folder``, newest first (temporary files are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CKPT.match(p.name)]
    return sorted(found, key=lambda p: int(_CKPT.match(p.name).group(1)), reverse=True)


def load_checkpoint(path: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``like``; shapes and dtypes must match."""
    arrays, meta = load_npz(path, kind="checkpoint")
    leaves, treedef = jax.tree_util.tree_flatten(like)
    if len(arrays) != len(leaves):
        raise CheckpointMismatchError(
            f"{path} holds {len(arrays)} arrays but this run's state has {len(leaves)}: "
            "it was written by a different model or optimizer."
        )
    restored = []
    for i, leaf in enumerate(leaves):
        value = arrays[f"leaf_{i:04d}"]
        leaf = np.asarray(leaf)
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise CheckpointMismatchError(
                f"{path}: array {i} has shape {value.shape} {value.dtype}, but this run expects "
                f"{leaf.shape} {leaf.dtype}: it was written for a different problem."
            )
        restored.append(value)
    return jax.tree_util.tree_unflatten(treedef, restored), meta


def load_latest_checkpoint(folder: str | os.PathLike, like: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads, or None if there is none.

    A file that fails to load is skipped (with atomic writes this cannot happen through a
    crash, but a disk can still corrupt a file); a mismatch with ``like`` is an error.
    """
    errors = []
    for path in list_checkpoints(folder):
        try:
            return load_checkpoint(path, like)
        except CheckpointMismatchError:
            raise  # a readable file of another problem: an error, not a damaged file to skip
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ValueError(f"no checkpoint in {folder} could be read: {'; '.join(errors)}")
    return None
