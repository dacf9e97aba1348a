"""A local checkpoint series seen as a model-hub repository: branches, commits, files and their hashes.

Each ``step{N}/`` folder of a series becomes a branch ``step{N}-tokens{M}B`` (M = tokens in billions, rounded
down, as the OLMo series name them) whose head commit holds that folder's files; ``main`` points at the last
step. Hashes follow the hub's rules, so the ordinary ``huggingface_hub`` client accepts them:

- a regular file's ETag is its git blob id, ``sha1(b"blob <size>\\0" + content)``;
- a large-file-storage (LFS) file (weights, or anything over 10 MiB) is advertised by the sha256 of its
  content (``X-Linked-Etag``, the ``lfs.sha256`` of the revision listing), and its git blob id is that of its
  pointer file.

Commit ids are deterministic (a sha1 over the branch and its files), so a series always maps to the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from gated_lpi_exp.checkpoints.resolve import list_local_checkpoints

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
LFS_MIN_BYTES = 10 * 2**20
"""Files this large are stored as LFS files whatever their suffix (the hub's threshold)."""


def git_blob_id(content: bytes) -> str:
    """Git's object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RepoFile:
    """One file of one revision."""

    path: str
    """Path inside the repository (``model.safetensors``)."""
    source: Path
    """Where its content lives on this machine."""

    @cached_property
    def size(self) -> int:
        return self.source.stat().st_size

    @cached_property
    def is_lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES) or self.size >= LFS_MIN_BYTES

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.source)

    @cached_property
    def git_id(self) -> str:
        """Git blob id: of the content, or of the LFS pointer file for LFS files."""
        return git_blob_id(self.pointer if self.is_lfs else self.source.read_bytes())

    @property
    def pointer(self) -> bytes:
        """The LFS pointer file git stores in place of an LFS file's content."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        ).encode()

    @property
    def etag(self) -> str:
        """What the hub advertises for the content: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.is_lfs else self.git_id

    def sibling(self, with_blobs: bool) -> dict:
        """This file in a revision listing (``/api/models/<repo>/revision/<rev>``)."""
        entry: dict = {"rfilename": self.path}
        if with_blobs:
            entry.update(size=self.size, blobId=self.git_id)
            if self.is_lfs:
                entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Revision:
    """A branch and the files of its head commit."""

    branch: str
    files: dict[str, RepoFile]
    step: int | None = None

    @cached_property
    def commit(self) -> str:
        tree = "".join(f"{path}\0{f.git_id}\n" for path, f in sorted(self.files.items()))
        return hashlib.sha1(f"commit {self.branch}\n{tree}".encode()).hexdigest()


def olmo_branch_name(step: int, tokens: int | None) -> str:
    """``step{N}-tokens{M}B`` (M in billions, rounded down), as the OLMo and OLMoE series name branches."""
    return f"step{step}-tokens{(tokens or 0) // 10**9}B"


@dataclass
class HubRepository:
    """A model repository with branches, built from a local series (:meth:`from_series`)."""

    repo_id: str
    revisions: dict[str, Revision] = field(default_factory=dict)
    """Branch name -> revision."""

    @classmethod
    def from_series(
        cls,
        repo_id: str,
        root: str | Path,
        branch_name: Callable[[int, int | None], str] = olmo_branch_name,
    ) -> HubRepository:
        """Every checkpoint of the series at ``root`` (a manifest and ``step{N}/`` folders) as a branch."""
        repo = cls(repo_id)
        checkpoints = list_local_checkpoints(root)
        for ckpt in checkpoints:
            folder = Path(ckpt.source)
            files = {p.name: RepoFile(p.name, p) for p in sorted(folder.iterdir()) if p.is_file()}
            name = branch_name(ckpt.step, ckpt.tokens)
            repo.revisions[name] = Revision(name, files, ckpt.step)
        last = repo.revisions[branch_name(checkpoints[-1].step, checkpoints[-1].tokens)]
        repo.revisions["main"] = Revision("main", dict(last.files))
        return repo

    def resolve(self, revision: str) -> Revision | None:
        """The revision a branch name or a full commit id names, or None."""
        if revision in self.revisions:
            return self.revisions[revision]
        return next((r for r in self.revisions.values() if r.commit == revision), None)

    def step_branches(self) -> list[Revision]:
        """The step branches, in step order."""
        return sorted((r for r in self.revisions.values() if r.step is not None), key=lambda r: r.step or 0)
