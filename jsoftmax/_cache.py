"""The private folder jsoftmax keeps its compiled programs in (``_aot`` reads and writes it).

A compiled program is code: loading one runs it. So the folder is trusted only as far as no one
else can write to it, and checked the way a careful loader checks a path:

* **Where**: ``$JSOFTMAX_CACHE_DIR`` when set (``off``, ``0``, ``none``, ``false``, ``no`` or an
  empty value disable the store), else ``$XDG_CACHE_HOME/jsoftmax`` or ``~/.cache/jsoftmax``.
  The setting is made absolute once, when jsoftmax is imported (a relative path means the
  directory the program started in, even after an ``os.chdir``); nothing is created then.
* **What**: on first use the folder is created private (0700) and opened once (``O_DIRECTORY``,
  ``O_NOFOLLOW`` on its last component); every later file operation is relative to that open
  folder, so renaming or replacing the path afterwards cannot redirect it. The folder must
  belong to this user and be writable by no one else — checked on the open folder at every use.
  Each file read is opened without following symlinks and must be a regular file of this user
  that no one else may write (``_aot``).

A folder that cannot be used gets one ``RuntimeWarning`` and jsoftmax runs without stored
programs: the store never fails a call. Importing jsoftmax changes no JAX setting: JAX's own
persistent compilation cache stays as the program configured it.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

ENV = "JSOFTMAX_CACHE_DIR"
DISABLED = {"", "0", "off", "none", "false", "no"}
PROGRAMS = "programs"


def configured_root() -> Path | None:
    """The store's root folder as the environment gives it, made absolute; None when off."""
    setting = os.environ.get(ENV)
    if setting is not None and setting.strip().lower() in DISABLED:
        return None
    if setting:
        return Path(os.path.abspath(os.path.expanduser(setting)))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(base)) / "jsoftmax"


ROOT = configured_root()  # resolved once, at import (a path only: nothing is created)


def private(info: os.stat_result) -> bool:
    """Owned by this user and writable by no one else."""
    owner_ok = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner_ok and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class Folder:
    """The programs folder, opened once; file operations are relative to it (``dir_fd``)."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def usable(self) -> bool:
        """Still this user's and writable by no one else (checked on the open folder)."""
        try:
            return private(os.fstat(self.fd))
        except OSError:
            return False


def open_folder(root: Path | None = ROOT) -> Folder | None:
    """``root/programs``, created private and opened; None (with one warning) when it cannot be
    used: another user's, writable by others, a symlink, not a folder, or not creatable."""
    if root is None:
        return None
    path = root / PROGRAMS
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _require_private(root, os.stat(root, follow_symlinks=True))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
        try:
            _require_private(path, os.fstat(fd))
        except OSError:
            os.close(fd)
            raise
    except OSError as err:
        warn(f"jsoftmax does not use stored compiled programs: {err}. Set {ENV} to a private "
             "writable folder, or to 'off'.")
        return None
    return Folder(path, fd)


def _require_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a folder")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{path} is writable by other users: others may write there")


_warned = False


def warn(message: str) -> None:
    """One RuntimeWarning per process: the store's trouble never stops a call."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=4)
