"""A local content-addressed store of numpy arrays: atomic writes, a lock per entry, verified reads.

Entries are keyed by the sha256 of a canonical JSON description of everything that determines them (model,
revision, data, attribution config, package version), so a run reuses what any earlier run computed.

Each entry is ``<key>.npz`` beside ``<key>.json``: the description, plus a ``stored`` record of the key, the
sha256 of the ``.npz`` file and the name, shape and dtype of every array. A read checks all of them; any
damage (a torn or overwritten file, a zip, zlib or npy-header error, a missing member, an array of another
shape or dtype than recorded) is one warning naming the file, and the entry is treated as absent, so it is
computed and written again. Nothing else in the store is touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from gated_lpi_exp.paths import cache_root

log = logging.getLogger(__name__)

ENTRY_FORMAT = 2
"""Layout of an entry's ``stored`` record (bumped when it changes)."""


def default_cache_dir() -> Path:
    """The user cache (:func:`gated_lpi_exp.paths.cache_root`)."""
    return cache_root()


def content_key(description: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``description``."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class DamagedEntry(ValueError):
    """A stored entry that does not read back as it was written."""


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
        """The arrays under ``key``, or None when absent or damaged (a damaged entry is reported once)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            # The writer's lock: the record and the file it checks are read as one writer left them.
            with FileLock(str(path) + ".lock"):
                return read_entry(path, key)
        except Exception as exc:  # noqa: BLE001 - every way a file can be damaged means "compute it again"
            report_damaged(path, exc)
            return None

    def put(self, key: str, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> Path:
        """Store atomically (temporary file, then rename) under a per-entry lock, so concurrent writers of
        the same entry never leave a torn file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as bool
        data = buffer.getvalue()
        stored = {
            "format": ENTRY_FORMAT,
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "arrays": {name: [list(a.shape), a.dtype.str] for name, a in arrays.items()},
        }
        sidecar = json.dumps({**description, "stored": stored}, sort_keys=True, indent=1, default=str)
        with FileLock(str(path) + ".lock"):
            # The description first: a reader that finds the .npz always finds the record that checks it.
            write_atomic(path.with_suffix(".json"), sidecar.encode())
            write_atomic(path, data)
        _reported.discard(str(path))  # written whole again: a later damage is news
        return path


def read_entry(path: Path, key: str) -> dict[str, np.ndarray]:
    """Read and verify one entry (see the module docstring).

    Raises:
        DamagedEntry: the record is missing or malformed, or the file does not match it.
        Exception: whatever numpy, zipfile or zlib raise on a file that matches its hash but not its format.
    """
    try:
        stored = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["stored"]
        shapes = {name: (tuple(shape), str(dtype)) for name, (shape, dtype) in stored["arrays"].items()}
    except Exception as exc:  # noqa: BLE001 - a missing or damaged record
        raise DamagedEntry(f"its record {path.with_suffix('.json').name} is unreadable ({exc})") from exc
    if stored.get("format") != ENTRY_FORMAT or stored.get("key") != key:
        raise DamagedEntry(f"its record {path.with_suffix('.json').name} is not this entry's")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != stored.get("sha256"):
        raise DamagedEntry("its content does not match the sha256 recorded when it was written")
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    found = {name: (a.shape, a.dtype.str) for name, a in arrays.items()}
    if found != shapes:
        raise DamagedEntry(f"its arrays {found} differ from the recorded {shapes}")
    return arrays


_reported: set[str] = set()


def report_damaged(path: Path, exc: BaseException) -> None:
    """One warning per damaged file and process, naming it and what is wrong."""
    if str(path) in _reported:
        return
    _reported.add(str(path))
    log.warning(
        "stored entry %s is damaged (%s: %s); it will be recomputed and written again",
        path,
        type(exc).__name__,
        exc,
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
