"""Where the tool keeps its own files, and whether a folder is private enough to trust what is in it.

The user cache (``$GATED_LPI_CACHE``, else ``$XDG_CACHE_HOME/gated_lpi_exp``, else
``~/.cache/gated_lpi_exp``) holds the built suites, the attribution cache, the result store, the file-hash
memo and the compiled kernel. Data in it is checked when read (hashes, schemas); compiled code is only loaded
from a folder that passes :func:`unsafe_reason`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_root() -> Path:
    """``$GATED_LPI_CACHE``, else ``$XDG_CACHE_HOME/gated_lpi_exp``, else ``~/.cache/gated_lpi_exp``."""
    if os.environ.get("GATED_LPI_CACHE"):
        return Path(os.environ["GATED_LPI_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gated_lpi_exp"


def unsafe_reason(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` is not safe to trust, or None when it is.

    Safe means: not a symbolic link, owned by this user, and not writable by the group or by others. For a
    folder, every folder above it must also be owned by this user or by root and not writable by others
    unless it has the sticky bit (like ``/tmp``), so nobody else can swap the folder for another.
    """
    try:
        info = path.lstat()
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if folder != stat.S_ISDIR(info.st_mode):
        return "is not a folder" if folder else "is not a regular file"
    problem = _owner_and_mode(info)
    if problem:
        return problem
    if folder:
        for parent in path.resolve().parents:
            above = parent.stat()
            if above.st_uid not in (os.getuid(), 0):
                return f"lies in {parent}, owned by uid {above.st_uid}"
            if above.st_mode & stat.S_IWOTH and not above.st_mode & stat.S_ISVTX:
                return f"lies in {parent}, which anyone can write to"
    return None


def _owner_and_mode(info: os.stat_result) -> str | None:
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by the group or by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode ``0700``) if needed and return it.

    Raises:
        PermissionError: the folder exists but :func:`unsafe_reason` finds it unsafe (the message says why).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    reason = unsafe_reason(path, folder=True)
    if reason:
        raise PermissionError(f"{path} {reason}")
    return path
