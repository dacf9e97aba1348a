"""The manifest of a local checkpoint series: ``<root>/manifest.json`` beside ``step{N}/`` folders.

Format (version ``gated_lpi_exp.suite/1``)::

    {"format": "gated_lpi_exp.suite/1", "name": "tiny_moe", "family": "olmoe",
     "config_hash": "3f2a...", "complete": true,
     "checkpoints": [{"step": 0, "tokens": 0, "train_loss": null, "path": "step0",
                      "files": {"model.safetensors": "<sha256>", "config.json": "<sha256>", ...}}, ...],
     "sha256": "<sha256 of the manifest's other fields>"}

``complete`` is false while a suite is being built; a reader refuses such a series unless told otherwise.
``files`` records the sha256 of every file of each step folder (weights, config, tokenizer) when the series
was written; loading a checkpoint verifies them. ``sha256`` covers the manifest itself, so damage to it is
noticed rather than read as other steps or other hashes. Manifests written before these two fields existed
are read as they are (nothing to verify).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gated_lpi_exp.checkpoints.checksums import folder_checksums
from gated_lpi_exp.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gated_lpi_exp.suite/1"


class DamagedManifestError(CheckpointError):
    """A manifest that cannot be read or does not match its own checksum."""


@dataclass
class ManifestEntry:
    """One saved checkpoint of a local series."""

    step: int
    """Training step at which the checkpoint was saved."""
    tokens: int | None = None
    """Training tokens seen up to this step."""
    train_loss: float | None = None
    """Mean training loss over the steps since the previous checkpoint (None at step 0)."""
    path: str = ""
    """Folder of the checkpoint, relative to the series root (``step{N}``)."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of each file of the folder when the series was written (empty: not recorded)."""


@dataclass
class Manifest:
    """What a local checkpoint series holds."""

    name: str
    family: str
    config_hash: str = ""
    complete: bool = False
    checkpoints: list[ManifestEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    sha256: str = ""
    """sha256 of the canonical JSON of every other field (empty in manifests written before it existed)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _self_checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temporary file, then rename).

    Entries without recorded file hashes get them now, from their step folders.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for entry in manifest.checkpoints:
        if not entry.files and (root / entry.path).is_dir():
            entry.files = folder_checksums(root / entry.path)
    doc = manifest.to_json()
    doc["sha256"] = manifest.sha256 = _self_checksum(doc)
    target = root / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def read_manifest(root: str | os.PathLike, *, require_complete: bool = True) -> Manifest:
    """Read and check a series' manifest (whether its step folders exist: :func:`present_entries`).

    Raises:
        DamagedManifestError: the manifest cannot be parsed, lacks fields, or does not match its checksum.
        CheckpointError: the manifest is missing, of another format, or incomplete (when
            ``require_complete``).
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"No {MANIFEST_NAME} in {root}: a local checkpoint series needs step{{N}}/ folders and a manifest "
            "(python -m gated_lpi_exp.suites writes one for the project's suites). Point model.source at "
            "such a folder."
        )
    manifest = _parse(path)
    if manifest.format != MANIFEST_FORMAT:
        raise CheckpointError(
            f"{path} has format {manifest.format!r}; this version reads {MANIFEST_FORMAT!r}."
        )
    if require_complete and not manifest.complete:
        raise CheckpointError(
            f"The checkpoint series in {root} is incomplete (an interrupted build?). "
            "Run again to resume the build."
        )
    return manifest


def _parse(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        stored = raw.get("sha256", "")
        if stored and stored != _self_checksum(raw):
            raise ValueError("its content does not match its sha256 field")
        raw.pop("sha256", None)
        entries = [ManifestEntry(**e) for e in raw.pop("checkpoints")]
        manifest = Manifest(checkpoints=entries, **raw, sha256=stored)
        _check_types(manifest)
    except Exception as exc:  # noqa: BLE001 - any damage reads as "damaged", never as other data
        raise DamagedManifestError(f"Damaged manifest {path}: {type(exc).__name__}: {exc}") from exc
    return manifest


def _check_types(manifest: Manifest) -> None:
    if not isinstance(manifest.complete, bool) or not isinstance(manifest.extra, dict):
        raise ValueError("complete must be true/false and extra an object")
    for entry in manifest.checkpoints:
        ok = isinstance(entry.step, int) and isinstance(entry.path, str) and isinstance(entry.files, dict)
        if not ok or not entry.path or Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
            raise ValueError(f"checkpoint entry {asdict(entry)} is malformed")


def present_entries(
    root: str | os.PathLike, manifest: Manifest
) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """The manifest's entries whose step folder exists, and those whose folder is missing."""
    root = Path(root)
    present = [e for e in manifest.checkpoints if (root / e.path).is_dir()]
    missing = [e for e in manifest.checkpoints if not (root / e.path).is_dir()]
    return present, missing
