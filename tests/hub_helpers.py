"""Shared by the hub tests: a served series, independent looks at the hub cache, and a disk sampler."""

from __future__ import annotations

import hashlib
import os
import threading
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


class DiskSampler:
    """Samples the bytes under a folder (partial files included) every ``interval`` seconds in a thread; an
    independent measure of the disk a run holds, computed without the project's own accounting."""

    def __init__(self, folder: Path, interval: float = 0.005):
        self.folder = folder
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.islink(path):
                        total += os.stat(path).st_size
                except FileNotFoundError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())
