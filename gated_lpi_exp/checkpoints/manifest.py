"""The manifest of a local checkpoint series: ``<root>/manifest.json`` beside ``step{N}/`` folders.

Format (version ``gated_lpi_exp.suite/1``)::

    {"format": "gated_lpi_exp.suite/1", "name": "tiny_moe", "family": "olmoe",
     "config_hash": "3f2a...", "complete": true,
     "checkpoints": [{"step": 0, "tokens": 0, "train_loss": null, "path": "step0"}, ...]}

``complete`` is false while a suite is being built; a reader refuses such a series unless told otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gated_lpi_exp.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gated_lpi_exp.suite/1"


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temporary file, then rename)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest.to_json(), fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def read_manifest(root: str | os.PathLike, *, require_complete: bool = True) -> Manifest:
    """Read and check a series' manifest.

    Raises:
        CheckpointError: the manifest is missing, unreadable, of another format, incomplete (when
            ``require_complete``), or names a step folder that does not exist.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"No {MANIFEST_NAME} in {root}: a local checkpoint series needs step{{N}}/ folders and a manifest. "
            "Point model.source at a folder built by this tool (or delete it to rebuild a project suite)."
        )
    try:
        raw = json.loads(path.read_text())
        entries = [ManifestEntry(**e) for e in raw.pop("checkpoints")]
        manifest = Manifest(checkpoints=entries, **raw)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"Damaged manifest {path}: {exc}. Delete the series folder {root} to rebuild it."
        ) from exc
    if manifest.format != MANIFEST_FORMAT:
        raise CheckpointError(
            f"{path} has format {manifest.format!r}; this version reads {MANIFEST_FORMAT!r}."
        )
    if require_complete and not manifest.complete:
        raise CheckpointError(
            f"The checkpoint series in {root} is incomplete (an interrupted build?). "
            "Run again to resume the build, or delete the folder to rebuild it."
        )
    for entry in manifest.checkpoints:
        if not (root / entry.path).is_dir():
            raise CheckpointError(
                f"{path} lists step {entry.step} at {root / entry.path}, which does not exist. "
                f"Delete {root} to rebuild the series."
            )
    return manifest
