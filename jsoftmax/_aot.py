"""Compiled programs kept on disk and loaded without tracing or lowering (:func:`call`).

JAX's persistent compilation cache (which jsoftmax leaves to the program to configure) keys a
program by its lowered form, so every fresh process still traces and lowers each program first:
about 0.4 s of a fit's first call whatever its data (``benchmarks/results/first-call-cpu.md``).
:func:`call` keys a program by what determines it instead — the function, its static
arguments, the tree structure and abstract values of its arguments, jsoftmax's source — and by
everything that changes the machine code compiled for it: the versions of Python, jax and
jaxlib, the platform, its version and the device kind, the CPU's features, ``XLA_FLAGS`` (and
``LIBTPU_INIT_ARGS``), the JAX settings that change code (x64, matmul precision, the PRNG) and
the compile options. The compiled executable (``jax.experimental.serialize_executable``) is kept
in ``programs/`` of jsoftmax's private folder (``_cache``) and read from disk once per process.

Anything unusual — a static value without a plain ``repr`` (an optax transformation, a mesh),
an argument that is traced or spread over several devices, a file or folder that cannot be
used — falls back to the jitted function itself: the store never fails a call.

The files are executable code loaded with pickle, so nothing is loaded that jsoftmax did not
write privately: the folder is checked on its open descriptor at every use (``_cache``), and
each file is opened relative to it without following symlinks and read only when it is a
regular file of this user that no one else may write; anything else is removed and compiled
afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import pickle
import platform
import secrets
import stat
import sys
from pathlib import Path
from typing import Any, Callable

import jax

from . import _cache
from ._compat import is_tracer

_UNSET = object()
_root: Path | None = _cache.ROOT  # where the store lives (None: off); see enable()
_folder: Any = _UNSET  # the opened _cache.Folder, None when unusable; opened on first use
_loaded: dict[str, Any] = {}  # key -> compiled program, this process
_source_digest: str | None = None
# Counts for tests and benchmarks: programs loaded from disk, compiled and stored, bypassed
# (the plain jitted call), and loaded or compiled programs that failed to run.
stats = {"loaded": 0, "compiled": 0, "bypassed": 0, "failed": 0}


def enable(root: Path | None) -> None:
    """Keep programs under ``root / "programs"`` from now on (None: off); opened on first use."""
    global _root, _folder
    _root = None if root is None else Path(os.path.abspath(root))
    _folder = _UNSET
    _loaded.clear()


def _store():
    """The opened programs folder, or None (off, or unusable: warned once)."""
    global _folder
    if _folder is _UNSET:
        _folder = _cache.open_folder(_root)
    return _folder


def call(jitted: Callable, args: tuple, static: dict[str, Any]):
    """``jitted(*args, **static)``, from a stored compiled program when the store is on."""
    folder = _store()
    key = None if folder is None else _key(jitted, args, static)
    if key is not None and not folder.usable():  # loading runs code: only from a private folder
        _cache.warn(f"jsoftmax does not use the compiled programs in {folder.path}: others may write there")
        key = None
    if key is None:
        stats["bypassed"] += 1
        return jitted(*args, **static)
    compiled = _loaded.get(key)
    if compiled is None:
        compiled = _read(folder, key)
        if compiled is None:
            compiled = _compile_afresh(jitted, args, static)  # tracing errors are the caller's
            if compiled is None:
                stats["bypassed"] += 1
                return jitted(*args, **static)
            stats["compiled"] += 1
            _write(folder, key, compiled)
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
        _remove(folder, f"{key}.bin")
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
        _cache.warn(f"jsoftmax could not compile a program to keep in {_root}: {err}")
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


# JAX settings that change the code compiled for the same program text.
CODE_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                 "jax_threefry_partitionable")
# Environment variables that change the code XLA compiles (target ISA, passes, TPU runtime).
CODE_ENVIRONMENT = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")


def machine() -> str:
    """Everything besides the program that changes its compiled code, as text: Python, jax and
    jaxlib versions, the platform, its version and device kind, the CPU and its features,
    ``XLA_FLAGS``/``LIBTPU_INIT_ARGS``, the JAX settings of :data:`CODE_SETTINGS`, the compile
    options. A program stored under one machine is never loaded under another."""
    device = jax.devices()[0]  # programs run on the default device (as a jitted call would)
    return "\n".join([
        f"python {sys.version_info[0]}.{sys.version_info[1]}", f"jax {jax.__version__}",
        f"jaxlib {_jaxlib_version()}", f"platform {device.platform} {device.device_kind}",
        f"platform version {getattr(device.client, 'platform_version', '')}",
        f"cpu {platform.machine()} {cpu_features()}",
        *(f"{name}={os.environ.get(name, '')}" for name in CODE_ENVIRONMENT),
        *(f"{name}={getattr(jax.config, name, None)}" for name in CODE_SETTINGS),
        f"options {sorted(FRESH_OPTIONS.items())}"])


@functools.lru_cache(maxsize=1)
def cpu_features() -> str:
    """The host CPU's model and feature flags (Linux: /proc/cpuinfo; elsewhere what the platform
    module says): XLA compiles CPU code for the features it finds."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return f"{platform.processor()} {platform.platform()}"
    wanted = ("model name", "flags", "features", "isa", "cpu model", "hardware")
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in wanted and name not in found:
            found[name] = " ".join(sorted(value.split())) if name in ("flags", "features") else value.strip()
    return repr(sorted(found.items()))


def _key(jitted: Callable, args: tuple, static: dict[str, Any]) -> str | None:
    statics = _stable(tuple(sorted(static.items())))
    if statics is None:
        return None
    leaves, tree = jax.tree_util.tree_flatten(args)
    device = jax.devices()[0]
    avals = []
    for leaf in leaves:
        if is_tracer(leaf):
            return None
        if isinstance(leaf, jax.Array) and leaf.sharding.device_set != {device}:
            return None
        aval = jax.typeof(leaf)
        memory = getattr(getattr(leaf, "sharding", None), "memory_kind", None) or ""  # host or device
        avals.append(f"{aval.dtype}{aval.shape}{'w' if getattr(aval, 'weak_type', False) else ''}{memory}")
    text = "\n".join([_source(), machine(), f"{jitted.__module__}.{jitted.__qualname__}",
                      statics, str(tree), ",".join(avals)])
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _jaxlib_version() -> str:
    # Cached: reading the installed metadata took ~0.5 ms, twice per fit (a third of the
    # estimator's overhead on a 178-row problem); an installed jaxlib does not change in-process.
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
        for path in sorted(package.rglob("*.py")) + sorted(package.glob("*.json")):
            digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
        _source_digest = digest.hexdigest()
    return _source_digest


NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _read(folder, key: str):
    """The program stored under ``key``, or None. Opened relative to the open folder without
    following a symlink, and read only when it is a regular file of this user that no one
    else may write; anything else there is removed (it will be compiled and written afresh)."""
    from jax.experimental.serialize_executable import deserialize_and_load

    name = f"{key}.bin"
    try:
        fd = os.open(name, os.O_RDONLY | NO_FOLLOW, dir_fd=folder.fd)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink (ELOOP) or something we may not open: not ours to load
        _remove(folder, name)
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not (stat.S_ISREG(info.st_mode) and _cache.private(info)):
                raise PermissionError("not a private regular file")
            stored_key, payload, in_tree, out_tree = pickle.load(handle)
        if stored_key != key:
            raise ValueError("the file holds another program")
        # On the default device alone (the backend may have several, e.g. forced host devices).
        return deserialize_and_load(payload, in_tree, out_tree, execution_devices=jax.devices()[:1])
    except Exception:  # noqa: BLE001 - a damaged, foreign or shared file: compile again, replace it
        _remove(folder, name)
        return None


def _remove(folder, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder.fd)
    except OSError:  # not ours to remove, or already gone: the next write says so
        pass


def _write(folder, key: str, compiled) -> None:
    """Store a program whole or not at all: a private temporary file in the open folder (created
    exclusively, never through a symlink), renamed over the key's file."""
    from jax.experimental.serialize_executable import serialize

    temporary = f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        payload, in_tree, out_tree = serialize(compiled)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o600, dir_fd=folder.fd)
        with os.fdopen(fd, "wb") as handle:
            pickle.dump((key, payload, in_tree, out_tree), handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, f"{key}.bin", src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
    except Exception as err:  # noqa: BLE001 - a program that cannot be kept is still run
        _remove(folder, temporary)
        _cache.warn(f"jsoftmax could not keep a compiled program in {folder.path}: {err}")
