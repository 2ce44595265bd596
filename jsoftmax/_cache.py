"""JAX's persistent compilation cache, switched on by jsoftmax in a per-user folder.

Compiling a fit costs 1–4 s; with the cache a second process loads the compiled programs from
disk instead. On import, jsoftmax points ``jax_compilation_cache_dir`` at

* ``$JSOFTMAX_CACHE_DIR`` when set (``off``, ``0``, ``none`` or an empty value disable it), else
* ``$XDG_CACHE_HOME/jsoftmax/jax-<version>`` or ``~/.cache/jsoftmax/jax-<version>``,

unless the program has set a cache folder of its own (which then wins). The folder is created
private (0700) and refused when another user owns it or others may write to it: a compiled
program is code, and a cache others can write would let them run theirs. A folder that cannot
be used gets one ``RuntimeWarning`` and jsoftmax runs uncached — a cache never fails a fit.
The cache only takes effect if nothing has been compiled in the process before the import.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import jax

ENV = "JSOFTMAX_CACHE_DIR"
DISABLED = {"", "0", "off", "none", "false", "no"}


def default_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jsoftmax" / f"jax-{jax.__version__}"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent cache at jsoftmax's per-user folder; the folder, or None when the
    cache is disabled, already configured by the program, or unusable (with a warning)."""
    setting = os.environ.get(ENV)
    if setting is not None and setting.strip().lower() in DISABLED:
        return None
    if jax.config.jax_compilation_cache_dir:
        return None
    folder = Path(setting).expanduser() if setting else default_folder()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise PermissionError(f"{folder} belongs to another user")
        if info.st_mode & 0o022:
            raise PermissionError(f"{folder} is writable by other users")
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        warnings.warn(f"jsoftmax runs without a compilation cache: {err}. Set {ENV} to a private "
                      f"writable folder, or to 'off'.", RuntimeWarning, stacklevel=3)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # jsoftmax's programs compile in 0.1–4 s; cache them all, not only those over 1 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder
