"""Content hashes of checkpoint files, computed once per file version and remembered.

A checkpoint's identity is the sha256 of its files (weights, config, tokenizer), not their modification
times: a suite rebuilt bit for bit keeps its identity, and a file changed in place gets a new one. Hashing
gigabytes on every run would cost as much as loading them, so each hash is remembered in a small memo under
the user cache (``<cache>/file_hashes/``), keyed by the file's path, size, inode, modification and change
times: a file that was written to since has another change time, so its hash is computed again. A damaged
memo entry is ignored (and rewritten).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from gated_lpi_exp.paths import cache_root

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".tiktoken")
"""Files of a checkpoint folder that determine what loading it gives: weights (``.bin``: OLMo v1's native
layout), configs, tokenizer files."""
_CHUNK = 1 << 22
_memo: dict[tuple, str] = {}
"""This process's memo, over the one on disk."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's content (hex), from the memo when the file is unchanged since it was hashed."""
    path = Path(path).resolve()
    info = path.stat()
    version = (str(path), info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
    if version in _memo:
        return _memo[version]
    memo_file = _memo_dir() / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
    digest = _read_memo(memo_file, version)
    if digest is None:
        digest = _hash(path)
        _write_memo(memo_file, version, digest)
    _memo[version] = digest
    return digest


def folder_checksums(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: sha256}`` of the files of a checkpoint folder that determine the model and tokenizer
    (:data:`CHECKPOINT_SUFFIXES`)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    return {p.name: file_sha256(p) for p in files}


def mismatched_files(folder: str | os.PathLike[str], expected: dict[str, str]) -> list[str]:
    """The names in ``expected`` whose file in ``folder`` is missing or has another sha256."""
    folder = Path(folder)
    bad = []
    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            bad.append(name)
    return bad


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _memo_dir() -> Path:
    return cache_root() / "file_hashes"


def _read_memo(memo_file: Path, version: tuple) -> str | None:
    try:
        entry = json.loads(memo_file.read_text())
        if entry["version"] == list(version) and len(entry["sha256"]) == 64:
            int(entry["sha256"], 16)
            return str(entry["sha256"])
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged memo entry only costs one hash
        log.warning("file-hash memo %s is unreadable (%s); hashing the file again", memo_file, exc)
    return None


def _write_memo(memo_file: Path, version: tuple, digest: str) -> None:
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo_file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": list(version), "sha256": digest}, fh)
        os.replace(tmp, memo_file)
    except OSError as exc:  # a read-only cache only costs hashing again next time
        log.debug("could not remember the hash of %s: %s", version[0], exc)
