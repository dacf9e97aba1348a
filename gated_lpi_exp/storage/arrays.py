"""A local content-addressed store of numpy arrays: atomic writes, a lock per entry, checked reads.

Entries are keyed by the sha256 of a canonical JSON description of everything that determines them (model,
revision, data, attribution config, package version), so a run reuses what any earlier run computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$GATED_LPI_CACHE``, else ``$XDG_CACHE_HOME/gated_lpi_exp``, else ``~/.cache/gated_lpi_exp``."""
    if os.environ.get("GATED_LPI_CACHE"):
        return Path(os.environ["GATED_LPI_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gated_lpi_exp"


def content_key(description: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``description``."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class ArrayStore:
    """Arrays stored as ``<root>/<namespace>/<key[:2]>/<key>.npz`` next to a ``.json`` description."""

    def __init__(self, root: str | Path | None, namespace: str):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.dir = self.root / namespace

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npz"

    def path(self, key: str) -> Path:
        """Where the entry ``key`` lives (whether or not it exists)."""
        return self._path(key)

    def lock(self, name: str) -> FileLock:
        """A cross-process lock ``<namespace>/locks/<name>.lock``: hold it while computing an entry that
        other processes may want at the same time, so they wait and read it instead of computing it too."""
        folder = self.dir / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f"{name}.lock"))

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays under ``key``, or None when absent or unreadable (a damaged entry is reported)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # truncated or corrupted
            log.warning("cache entry %s is damaged (%s); it will be recomputed", path, exc)
            return None

    def put(self, key: str, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> Path:
        """Store atomically (temporary file, then rename) under a per-entry lock, so concurrent writers of
        the same entry never leave a torn file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as bool
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            _write_text_atomic(
                path.with_suffix(".json"), json.dumps(description, sort_keys=True, indent=1, default=str)
            )
        return path


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
