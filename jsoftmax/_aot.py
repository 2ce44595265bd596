"""Compiled programs kept on disk and loaded without tracing or lowering (:func:`call`).

JAX's persistent compilation cache (``_cache``) skips XLA's compilation, but its key is the
lowered program, so every fresh process still traces and lowers each program first: about
0.4 s of a fit's first call whatever its data (``benchmarks/results/first-call-cpu.md``).
:func:`call` keys a program by what determines it instead — the function, its static
arguments, the tree structure and abstract values of its arguments, jsoftmax's source, the
versions of jax and jaxlib, the x64 flag and the device — and keeps the compiled executable
(``jax.experimental.serialize_executable``) in ``programs/`` of the cache folder. A program is
read from disk once per process.

Anything unusual — a static value without a plain ``repr`` (an optax transformation, a mesh),
an argument that is traced or spread over several devices, a file or folder that cannot be
used — falls back to the jitted function itself: the store never fails a call.

The files are executable code loaded with pickle. They live in the cache folder, which
``_cache`` creates private to the user and refuses when others can write to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import jax

from ._compat import is_tracer

FOLDER_NAME = "programs"
_folder: Path | None = None  # set by enable(); None: the store is off
_loaded: dict[str, Any] = {}  # key -> compiled program, this process
_source_digest: str | None = None
_warned = False
# Counts for tests and benchmarks: programs loaded from disk, compiled and stored, bypassed
# (the plain jitted call), and loaded or compiled programs that failed to run.
stats = {"loaded": 0, "compiled": 0, "bypassed": 0, "failed": 0}


def enable(cache_folder: Path | None) -> Path | None:
    """Keep programs in ``cache_folder / "programs"`` (None: off). Returns that folder."""
    global _folder
    _folder = None if cache_folder is None else Path(cache_folder) / FOLDER_NAME
    _loaded.clear()
    return _folder


def call(jitted: Callable, args: tuple, static: dict[str, Any]):
    """``jitted(*args, **static)``, from a stored compiled program when the store is on."""
    key = None if _folder is None else _key(jitted, args, static)
    if key is not None and not _private(_folder):  # loading runs code: only from a private folder
        _warn(f"jsoftmax does not use the compiled programs in {_folder}: others may write there")
        key = None
    if key is None:
        stats["bypassed"] += 1
        return jitted(*args, **static)
    compiled = _loaded.get(key)
    if compiled is None:
        compiled = _read(key)
        if compiled is None:
            compiled = _compile_afresh(jitted, args, static)  # tracing errors are the caller's
            if compiled is None:
                stats["bypassed"] += 1
                return jitted(*args, **static)
            stats["compiled"] += 1
            _write(key, compiled)
        else:
            stats["loaded"] += 1
        _loaded[key] = compiled
    try:
        return compiled(*args)
    except jax.errors.JaxRuntimeError:
        # A stored program that does not run (it should not happen, see _compile_afresh): forget
        # it, and run the jitted function instead unless the failed run consumed donated inputs.
        stats["failed"] += 1
        _loaded.pop(key, None)
        _remove(_folder / f"{key}.bin")
        leaves = jax.tree_util.tree_leaves(args)
        if any(isinstance(leaf, jax.Array) and leaf.is_deleted() for leaf in leaves):
            raise
        return jitted(*args, **static)


# An executable that JAX's persistent cache served cannot be serialised again: XLA on a CPU then
# lacks its kernels ("Function ... not found" when the copy runs). A program for the store is
# therefore always compiled afresh, under a compile option that is part of JAX's cache key but
# does not change the code (a dump setting, inert without a dump folder), with JAX's cache
# writes held off so that no entry under that key ever exists.
FRESH_OPTIONS = {"xla_dump_large_constants": True}


def _compile_afresh(jitted: Callable, args: tuple, static: dict[str, Any]):
    """The compiled program, or None (with one warning) when this backend cannot compile it so."""
    lowered = jitted.lower(*args, **static)
    setting = "jax_persistent_cache_min_compile_time_secs"
    previous = getattr(jax.config, setting)
    jax.config.update(setting, 1e12)
    try:
        return lowered.compile(compiler_options=FRESH_OPTIONS)
    except Exception as err:  # noqa: BLE001 - e.g. a backend that refuses the option: run plainly
        _warn(f"jsoftmax could not compile a program to keep in {_folder}: {err}")
        return None
    finally:
        jax.config.update(setting, previous)


def _stable(value: Any) -> str | None:
    """A repr that names ``value`` across processes, or None when there is none."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        parts = [_stable(v) for v in value]
        if any(p is None for p in parts):
            return None
        return f"{type(value).__name__}({', '.join(parts)})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "_fields"):  # a NamedTuple
        fields = value._asdict()
    else:
        return None
    parts = {name: _stable(v) for name, v in fields.items()}
    if any(p is None for p in parts.values()):
        return None
    return f"{type(value).__module__}.{type(value).__qualname__}({parts})"


def _key(jitted: Callable, args: tuple, static: dict[str, Any]) -> str | None:
    statics = _stable(tuple(sorted(static.items())))
    if statics is None:
        return None
    leaves, tree = jax.tree_util.tree_flatten(args)
    device = jax.devices()[0]  # programs run on the default device (as a jitted call would)
    avals = []
    for leaf in leaves:
        if is_tracer(leaf):
            return None
        if isinstance(leaf, jax.Array) and leaf.sharding.device_set != {device}:
            return None
        aval = jax.typeof(leaf)
        avals.append(f"{aval.dtype}{aval.shape}{'w' if getattr(aval, 'weak_type', False) else ''}")
    text = "\n".join([
        _source(), jax.__version__, _jaxlib_version(),
        str(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision),
        device.platform, device.device_kind, f"{jitted.__module__}.{jitted.__qualname__}",
        statics, str(tree), ",".join(avals)])
    return hashlib.sha256(text.encode()).hexdigest()


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source() -> str:
    """A digest of jsoftmax's code and rules: any change to them makes new keys."""
    global _source_digest
    if _source_digest is None:
        digest = hashlib.sha256()
        package = Path(__file__).parent
        for path in sorted(package.glob("*.py")) + sorted(package.glob("*.json")):
            digest.update(path.name.encode() + path.read_bytes())
        _source_digest = digest.hexdigest()
    return _source_digest


def _private(folder: Path) -> bool:
    """The folder is this user's and nobody else may write to it (or it does not exist yet)."""
    try:
        info = folder.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner_ok and not info.st_mode & 0o022


def _read(key: str):
    from jax.experimental.serialize_executable import deserialize_and_load

    path = _folder / f"{key}.bin"
    try:
        with open(path, "rb") as handle:
            stored_key, payload, in_tree, out_tree = pickle.load(handle)
        if stored_key != key:
            raise ValueError("the file holds another program")
        # On the default device alone (the backend may have several, e.g. forced host devices).
        return deserialize_and_load(payload, in_tree, out_tree, execution_devices=jax.devices()[:1])
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged or foreign file: compile again, replace it
        _remove(path)
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # not ours to remove, or no folder at all: the next write says so
        pass


def _write(key: str, compiled) -> None:
    from jax.experimental.serialize_executable import serialize

    temporary = None
    try:
        payload, in_tree, out_tree = serialize(compiled)
        _folder.mkdir(mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=_folder, suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            pickle.dump((key, payload, in_tree, out_tree), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, _folder / f"{key}.bin")  # whole or not at all
    except Exception as err:  # noqa: BLE001 - a program that cannot be kept is still run
        if temporary is not None:
            _remove(Path(temporary))
        _warn(f"jsoftmax could not keep a compiled program in {_folder}: {err}")


def _warn(message: str) -> None:
    """One RuntimeWarning per process: the store's trouble never stops a fit."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=4)
