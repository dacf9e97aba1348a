"""Shared by the hub tests: a served series and independent looks at the hub cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gated_lpi_exp.checkpoints.hub import HubSettings
from gated_lpi_exp.testing.hub_repo import HubRepository

REPO = "org/random-dense"


def settings_for(server_url: str, cache: Path, offline: bool = False) -> HubSettings:
    return HubSettings(server_url, cache, offline)


def repo_folder(cache: Path, repo_id: str = REPO) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def blob_names(cache: Path, repo_id: str = REPO) -> set[str]:
    """Complete blobs in the cache (partial downloads left out)."""
    blobs = repo_folder(cache, repo_id) / "blobs"
    return (
        {p.name for p in blobs.iterdir() if not p.name.endswith(".incomplete")} if blobs.is_dir() else set()
    )


def weights_etag(repo: HubRepository, branch: str) -> str:
    return repo.revisions[branch].files["model.safetensors"].sha256


def checkpoint_bytes(repo: HubRepository) -> int:
    """The largest step branch, in bytes of content (what one downloaded checkpoint takes at most)."""
    return max(sum(f.size for f in r.files.values()) for r in repo.step_branches())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
