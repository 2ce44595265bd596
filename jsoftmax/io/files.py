"""Atomic, code-free files: model and checkpoint storage.

Everything is an ``.npz`` read with ``allow_pickle=False`` (loading never runs code) plus a
JSON metadata string stored as a unicode array. Writes go to a temporary file in the target
folder, are flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on
POSIX and Windows), so a process killed at any moment leaves either the old file or the new
one, never half of one. The metadata records every array's dtype and shape and a SHA-256 of
the metadata and the arrays; reading parses the zip itself (no allocation larger than the file
warrants), checks the CRCs, the manifest and the checksum, and turns every failure into one
``ValueError`` naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

META_KEY = "__meta__"
CHECKSUM_KEY = "sha256"
MANIFEST_KEY = "arrays"


def content_digest(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata (less the checksum itself) and of every array's name, dtype,
    shape and bytes, in name order: any edit of a stored value changes it."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != CHECKSUM_KEY},
                                       sort_keys=True).encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


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
    meta = dict(meta, **{MANIFEST_KEY: {name: [v.dtype.str, list(v.shape)] for name, v in payload.items()}})
    meta.pop(CHECKSUM_KEY, None)
    try:
        meta[CHECKSUM_KEY] = content_digest(payload, meta)
        payload[META_KEY] = np.array(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot store the metadata of {path} as JSON: {err}") from None
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600; keep the old file's mode, or the umask's
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


def _file_mode(path: Path) -> int:
    """The permissions a save gives ``path``: those of the file it replaces, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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


def load_npz(path: str | os.PathLike, *, kind: str,
             require_checksum: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify every array and the metadata of a file written by :func:`atomic_save_npz`.

    Raises ``FileNotFoundError`` if absent and one ``ValueError`` naming the file for anything
    truncated, corrupt, edited or not of this format. ``require_checksum=False`` admits files
    written before checksums were recorded (their arrays are still read in full and checked).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a jsoftmax {kind} file.")
    try:
        arrays = read_npy_members(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is a damaged file, said once
        raise ValueError(f"{path} is not a readable jsoftmax {kind} file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from None
    if META_KEY not in arrays:
        raise ValueError(f"{path} is not a jsoftmax {kind} file: it has no metadata.")
    raw = arrays.pop(META_KEY)
    try:
        if raw.shape != () or raw.dtype.kind != "U":
            raise ValueError(f"the metadata is a {raw.dtype} array of shape {raw.shape}, not a string")
        meta = json.loads(str(raw))
    except ValueError as err:
        raise ValueError(f"{path}: corrupt metadata: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt metadata: expected a JSON object, found {type(meta).__name__}.")
    if meta.get("kind") != kind:
        raise ValueError(f"{path} is not a jsoftmax {kind} file (kind={meta.get('kind')!r}).")
    if CHECKSUM_KEY in meta or require_checksum:
        _verify(path, arrays, meta)
    return arrays, meta


def _verify(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    manifest, checksum = meta.get(MANIFEST_KEY), meta.get(CHECKSUM_KEY)
    if not isinstance(manifest, dict) or not isinstance(checksum, str):
        raise ValueError(f"{path}: no array manifest or checksum in the metadata (not written by "
                         "this jsoftmax, or edited).")
    found = {name: [v.dtype.str, list(v.shape)] for name, v in arrays.items()}
    if found != manifest:
        missing = sorted(set(manifest) - set(found))
        extra = sorted(set(found) - set(manifest))
        changed = sorted(n for n in set(found) & set(manifest) if found[n] != manifest[n])
        raise ValueError(f"{path}: the arrays do not match the file's manifest (missing {missing}, "
                         f"unexpected {extra}, changed dtype or shape {changed}).")
    if content_digest(arrays, meta) != checksum:
        raise ValueError(f"{path}: checksum mismatch: the file was modified after it was written.")


def read_npy_members(path: Path, *, allow_compressed: bool = False) -> dict[str, np.ndarray]:
    """Every ``name.npy`` member of an ``.npz`` (uncompressed, as ``np.savez`` writes, unless
    ``allow_compressed``), parsed here so that no array is allocated beyond what its member
    holds: each header must account for its member's size exactly, a stored member must fit in
    the file, and the zip CRC is checked."""
    size = path.stat().st_size
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if not name:
                raise ValueError(f"unexpected member {info.filename!r}")
            if name in arrays:
                raise ValueError(f"member {info.filename!r} appears twice")
            compressed = allow_compressed and info.compress_type == zipfile.ZIP_DEFLATED
            if not compressed and (info.compress_type != zipfile.ZIP_STORED or info.file_size > size):
                raise ValueError(f"member {info.filename!r} declares {info.file_size} bytes "
                                 f"(compression {info.compress_type}) in a file of {size}")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename!r} holds Python objects (needs pickle)")
                nbytes = math.prod(shape) * dtype.itemsize
                if member.tell() + nbytes != info.file_size:
                    raise ValueError(f"member {info.filename!r}: its header declares {shape} {dtype} "
                                     f"({nbytes} bytes) but the member holds {info.file_size - member.tell()}")
                data = member.read(nbytes)
                if len(data) != nbytes or member.read(1):  # reading to the end checks the CRC
                    raise ValueError(f"member {info.filename!r} is truncated")
            arrays[name] = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    return arrays


# --- Training checkpoints ---------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that belongs to another problem (not a damaged file)."""


def fingerprint(arrays, options: dict[str, Any]) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes and of the JSON of ``options``.

    Arrays spread over several processes are fingerprinted by this process's shards (each
    process checks its own rows). ``None`` entries are recorded as absent.
    """
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=repr).encode())
    # An X read in place by its values (its NumPy array); a sparse layout by its arrays.
    leaves = [leaf for array in arrays for leaf in
              ([array] if array is None or hasattr(array, "__array__") else jax.tree_util.tree_leaves(array))]
    for array in leaves:
        if array is None:
            digest.update(b"none")
            continue
        shards = [array] if getattr(array, "is_fully_addressable", True) else [
            shard.data for shard in array.addressable_shards]
        for part in shards:
            values = np.ascontiguousarray(np.asarray(part))
            digest.update(f"{values.dtype.str}{values.shape}".encode())
            # The buffer itself, not a bytes copy of it (X may be most of the memory).
            digest.update(values.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def describe(obj: Any, _depth: int = 0, _seen: set | None = None) -> str:
    """A text that names what ``obj`` computes, the same in every process: for a function
    (an optax transformation's ``init``/``update``, a schedule) its module, name and code, and
    what its closure and defaults hold, recursively; numbers, strings and arrays by value. Two
    ``optax.adam(0.1)`` describe the same; ``optax.adam(0.2)`` or ``optax.sgd(0.1)`` differ."""
    seen = set() if _seen is None else _seen
    if _depth > 12 or id(obj) in seen:
        return "..."
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return repr(obj)
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        value = np.asarray(obj)
        return f"array({value.dtype.str}{value.shape}:{hashlib.sha256(value.tobytes()).hexdigest()[:16]})"
    seen.add(id(obj))
    inner = lambda value: describe(value, _depth + 1, seen)  # noqa: E731
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}({', '.join(map(inner, obj))})"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{inner(k)}: {inner(v)}" for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0]))) + "}"
    code = getattr(obj, "__code__", None)
    if code is not None:  # a function: its code and everything it closes over
        cells = [inner(cell.cell_contents) if _filled(cell) else "<empty>" for cell in obj.__closure__ or ()]
        digest = _code_digest(code)
        return (f"{obj.__module__}.{obj.__qualname__}[{digest}](closure={cells}, "
                f"defaults={inner(obj.__defaults__)}, kwdefaults={inner(obj.__kwdefaults__)})")
    if isinstance(obj, functools.partial):
        return f"partial({inner(obj.func)}, {inner(obj.args)}, {inner(obj.keywords)})"
    fields = getattr(obj, "_asdict", None)
    if callable(fields):  # a NamedTuple, e.g. optax.GradientTransformation
        return f"{type(obj).__qualname__}({inner(fields())})"
    state = getattr(obj, "__dict__", None)
    return f"{type(obj).__module__}.{type(obj).__qualname__}({inner(state) if isinstance(state, dict) else ''})"


def _code_digest(code) -> str:
    """A digest of a code object's instructions, names and constants (nested code included),
    the same in every process (no addresses)."""
    digest = hashlib.sha256(code.co_code + repr(code.co_names).encode())
    for const in code.co_consts:
        digest.update((_code_digest(const) if hasattr(const, "co_code") else repr(const)).encode())
    return digest.hexdigest()[:16]


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


# ckpt-<run>-<step>.npz: a run (its fingerprint's first 16 hex digits) owns its files, so runs
# sharing a folder never prune each other's. Files of older jsoftmax, ckpt-<step>.npz, are
# read for resuming when their fingerprint matches.
_CKPT = re.compile(r"^ckpt-(?:(?P<run>[0-9a-f]{16})-)?(?P<step>\d{9})\.npz$")


def run_id(fingerprint_text: str) -> str:
    """The name a run's checkpoint files carry: the first 16 hex digits of its fingerprint."""
    return fingerprint_text[:16]


def save_checkpoint(folder: str | os.PathLike, step: int, state: Any, meta: dict[str, Any], *,
                    run: str, keep: int = 2) -> Path:
    """Save the pytree ``state`` as checkpoint ``step`` of ``run`` in ``folder``; keep that run's
    last ``keep`` (other runs' files are left alone)."""
    folder = Path(folder)
    if folder.is_dir():  # temporary files of this run's writer that was killed mid-write
        for stale in folder.glob(f".ckpt-{run}-*.tmp"):
            stale.unlink(missing_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    path = atomic_save_npz(folder / f"ckpt-{run}-{step:09d}.npz", arrays,
                           dict(meta, kind="checkpoint", step=step, run=run))
    for old in list_checkpoints(folder, run=run)[keep:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike, run: str | None = None) -> list[Path]:
    """Checkpoint files in ``folder`` (of ``run`` only, when given), newest first; temporary
    files are never listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(m, p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    if run is not None:
        found = [(m, p) for m, p in found if m.group("run") == run]
    return [p for m, p in sorted(found, key=lambda mp: int(mp[0].group("step")), reverse=True)]


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file's name records."""
    return int(_CKPT.match(Path(path).name).group("step"))


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


def load_latest_checkpoint(folder: str | os.PathLike, like: Any, *, run: str | None = None,
                           fingerprint: str | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint of ``run`` in ``folder`` that loads, or None if the folder holds
    no checkpoint at all.

    A file that fails to load is skipped (with atomic writes this cannot happen through a
    crash, but a disk can still corrupt a file); a mismatch with ``like`` is an error. With
    ``run``, files of older jsoftmax (no run in their name) count when their ``fingerprint``
    matches; when the folder holds only other runs' checkpoints, ``CheckpointMismatchError``.
    """
    errors = []
    mine = list_checkpoints(folder, run) if run is not None else list_checkpoints(folder)
    legacy = [p for p in list_checkpoints(folder) if run is not None and _CKPT.match(p.name).group("run") is None]
    for path in sorted(mine + legacy, key=checkpoint_step, reverse=True):
        try:
            tree, meta = load_checkpoint(path, like)
        except CheckpointMismatchError:
            if path in legacy:
                continue
            raise  # a readable file of another problem: an error, not a damaged file to skip
        except ValueError as err:
            errors.append(str(err))
            continue
        if path in legacy and meta.get("fingerprint") != fingerprint:
            continue
        return tree, meta
    if errors:
        raise ValueError(f"no checkpoint in {folder} could be read: {'; '.join(errors)}")
    others = list_checkpoints(folder)
    if run is not None and others:
        raise CheckpointMismatchError(
            f"the checkpoints in {folder} ({len(others)} file(s)) were written for other data or options "
            "(data, weights, l2/C, label smoothing, ignore_index, batch size, seed, dtype, solver or "
            "optimizer differ): resuming would continue a different problem. Use another folder, or "
            "resume=False to start afresh (other runs' checkpoints are kept).")
    return None
