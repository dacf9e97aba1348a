"""Build the native kernel's shared library, and load it only from a place no one else can write.

Loading a shared library runs its code in this process, so the library is only ever loaded:

- from a folder that is this user's, not a symbolic link, not writable by the group or others, inside
  folders no one else can swap (``<cache>/kernels``, created ``0700``; :func:`gated_lpi_exp.paths.unsafe_reason`);
- when the file itself is this user's, a regular file, not writable by the group or others;
- when its sha256 matches the record ``<name>.sha256`` written beside it when this tool built it.

A folder that fails the check is not used: the library is built in a private temporary folder for this
process instead, with a warning that says how to fix the folder. A file without a matching record (planted,
damaged, or left by an older version) is never loaded: it is built again in its place, with a warning.
The bytes whose hash was checked are the bytes loaded: the file is opened once, checked through its open
descriptor, and loaded through ``/proc/self/fd`` where that exists.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

from gated_lpi_exp.paths import cache_root, private_dir

log = logging.getLogger(__name__)

_fallback: dict[str, Path] = {}


def kernel_dir() -> Path:
    """``<cache>/kernels`` when it is private (created ``0700`` if missing), else a private temporary
    folder for this process (with a warning naming the problem and the fix)."""
    folder = cache_root() / "kernels"
    try:
        return private_dir(folder)
    except OSError as exc:
        if "dir" not in _fallback:
            _fallback["dir"] = Path(tempfile.mkdtemp(prefix="gated-lpi-kernels-"))  # 0700, this user's
            atexit.register(shutil.rmtree, _fallback["dir"], ignore_errors=True)
            log.warning(
                "not loading compiled code from %s: %s. Building the native kernel in %s for this process "
                "instead. Fix: make the folder yours and private (chmod 700), or set GATED_LPI_CACHE to a "
                "folder of your own.",
                folder,
                exc,
                _fallback["dir"],
            )
        return _fallback["dir"]


def build_or_load(folder: Path, stem: str, source: str, command: list[str]) -> ctypes.CDLL:
    """The library ``<folder>/<stem>.so``: loaded when its build record vouches for it, else built from
    ``source`` with ``command`` (``{src}`` and ``{out}`` are filled in) and then loaded.

    Raises:
        RuntimeError: the compiler failed.
        OSError: the library cannot be loaded.
    """
    path, record = folder / f"{stem}.so", folder / f"{stem}.sha256"
    with FileLock(str(folder / f".{stem}.lock")):
        if path.exists() or path.is_symlink():
            try:
                return load_verified(path, record)
            except OSError as exc:  # PermissionError: a check failed; others: a link, an unreadable file
                log.warning("refusing to load %s: %s; building it again", path, exc)
        _compile(folder, path, record, source, command)
        return load_verified(path, record)


def load_verified(path: Path, record: Path) -> ctypes.CDLL:
    """Load ``path`` if it and its record pass the checks of the module docstring.

    Raises:
        PermissionError: a check failed (the message says which).
    """
    expected = _read_record(record)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        problem = _file_problem(os.fstat(fd))
        if problem:
            raise PermissionError(f"the file {problem}")
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != expected:
            raise PermissionError(f"its sha256 does not match the build record {record.name}")
        via_fd = f"/proc/self/fd/{fd}"
        return ctypes.CDLL(via_fd if os.path.exists(via_fd) else str(path))
    finally:
        os.close(fd)


def _read_record(record: Path) -> str:
    try:
        fd = os.open(record, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise PermissionError(f"it has no build record ({record.name}: {exc.strerror})") from exc
    try:
        problem = _file_problem(os.fstat(fd))
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if problem:
        raise PermissionError(f"its build record {record.name} {problem}")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise PermissionError(f"its build record {record.name} is malformed")
    return text


def _file_problem(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by the group or by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _compile(folder: Path, path: Path, record: Path, source: str, command: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / "kernel.cpp", Path(tmp) / path.name
        src.write_text(source)
        args = [a.format(src=src, out=out) for a in command]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[:500]}")
        os.chmod(out, 0o700)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        made = Path(tmp) / record.name
        made.write_text(digest + "\n")
        os.chmod(made, 0o600)
        # Record first: a library is only ever found beside the record that vouches for it or an older one
        # (then refused and rebuilt), never vouched for by nothing.
        os.replace(made, record)
        os.replace(out, path)
