"""What this tool downloaded into the hub cache, and evicting it again once a checkpoint's results are stored.

The hub cache keeps each revision as ``snapshots/<commit>/<file>`` links to content-addressed ``blobs/<etag>``
(shared between revisions with the same file, e.g. an unchanged tokenizer). The ledger,
``<cache>/.locks/models--<org>--<name>/gated_lpi_exp-fetched.json`` (beside the client's own lock files, so
``hf cache scan`` does not see it), records per commit the links this tool created, the ``refs/<branch>`` it
wrote, the processes using the commit and the blobs they need, and per repository the blobs it downloaded. Only those are ever
deleted: a file that was in the cache before (a branch the user already had, or a blob it shares) is never
in the ledger.

Eviction of a commit happens when the last process using it releases it: its recorded links go, then its
folder and ref when empty, then every recorded blob that no snapshot links to any more and no other commit
in the ledger needs (checked under the client's per-blob lock, which the client also holds while it links a
blob; a process registers what it needs before it looks at the cache, so a blob it finds there stays). A
process killed before its eviction leaves its entries behind, blobs and all; the next run adopts them
(:meth:`FetchLedger.abandoned`): it fetches those it needs and evicts the others. Every change is a
read-modify-write under a file lock, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock

from gated_lpi_exp.checkpoints.hub import HubSettings

log = logging.getLogger(__name__)

LEDGER_NAME = "gated_lpi_exp-fetched.json"
LEDGER_FORMAT = "gated_lpi_exp.fetched/1"
_ETAG = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _safe_name(name: str) -> bool:
    """A path inside a snapshot folder (the ledger is data: it never names a file outside the repository)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts


def user_alive(user: str) -> bool:
    """Whether ``host:pid`` is a live process (one on another host counts as alive: it cannot be checked)."""
    host, _, pid = user.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class FetchLedger:
    """The ledger of one repository in one hub cache.

    Args:
        settings: Where the cache is.
        repo_id: The repository.
    """

    def __init__(self, settings: HubSettings, repo_id: str):
        self.folder = settings.repo_folder(repo_id)
        self.locks = settings.cache_dir / ".locks" / self.folder.name
        self.path = self.locks / LEDGER_NAME
        self.me = f"{socket.gethostname()}:{os.getpid()}"

    def read(self) -> dict[str, Any]:
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("format") == LEDGER_FORMAT:
                    return doc
            except (OSError, ValueError):
                pass
            log.warning(
                "download ledger %s is unreadable; starting a new one (nothing is deleted)", self.path
            )
        return {"format": LEDGER_FORMAT, "blobs": {}, "commits": {}}

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        self.locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            doc = self.read()
            out = change(doc)
            fd, tmp = tempfile.mkstemp(dir=self.locks, prefix=".fetched.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return out

    def _entry(self, doc: dict[str, Any], commit: str) -> dict[str, Any]:
        return doc["commits"].setdefault(commit, {"links": [], "needs": [], "ref": None, "users": []})

    def acquire(self, commit: str, needs: list[str] | None = None) -> None:
        """Note that this process uses ``commit``, whose files are the blobs ``needs``: until it releases the
        commit, no eviction deletes them (nor the links to them)."""

        def add(doc: dict[str, Any]) -> None:
            entry = self._entry(doc, commit)
            if self.me not in entry["users"]:
                entry["users"].append(self.me)
            entry["needs"] = sorted(set(entry.get("needs", [])) | set(needs or []))

        self._update(add)

    def record(self, commit: str, link: str, blob: str | None, size: int) -> None:
        """This process created the link ``snapshots/<commit>/<link>`` and, when ``blob``, downloaded it."""

        def add(doc: dict[str, Any]) -> None:
            links = self._entry(doc, commit)["links"]
            if link not in links:
                links.append(link)
            if blob is not None:
                doc["blobs"][blob] = size

        self._update(add)

    def record_ref(self, commit: str, branch: str) -> None:
        """This process wrote ``refs/<branch>`` (pointing at ``commit``)."""
        self._update(lambda doc: self._entry(doc, commit).update(ref=branch))

    def disown(self, commit: str) -> None:
        """This process stops using ``commit`` without evicting it (its run stopped early): a later run that
        needs it finds its files, and one that does not evicts them (:meth:`abandoned`)."""

        def drop(doc: dict[str, Any]) -> None:
            entry = doc["commits"].get(commit)
            if entry is not None:
                entry["users"] = [u for u in entry["users"] if u != self.me]

        self._update(drop)

    def abandoned(self) -> list[str]:
        """Commits whose every user is gone (killed before it could evict them)."""
        doc = self.read()
        return [c for c, e in doc["commits"].items() if not any(map(user_alive, e["users"]))]

    def release(self, commit: str, evict: bool) -> int:
        """This process is done with ``commit``; evict its recorded files if ``evict`` and no one else uses it.

        Returns:
            Bytes of blobs deleted.
        """

        def change(doc: dict[str, Any]) -> int:
            entry = doc["commits"].get(commit)
            if entry is None:
                return 0
            entry["users"] = [u for u in entry["users"] if u != self.me and user_alive(u)]
            if entry["users"]:
                return 0  # the last process out evicts
            del doc["commits"][commit]
            if not evict:  # kept: its files are the user's now
                for blob in self._linked_blobs(commit, entry["links"]):
                    doc["blobs"].pop(blob, None)
                return 0
            self._remove_links(commit, entry)
            return self._sweep_blobs(doc)

        return self._update(change)

    def _linked_blobs(self, commit: str, links: list[str]) -> set[str]:
        snapshot = self.folder / "snapshots" / commit
        return {os.path.basename(os.readlink(p)) for n in links if (p := snapshot / n).is_symlink()}

    def _remove_links(self, commit: str, entry: dict[str, Any]) -> None:
        if not _COMMIT.match(commit):
            return
        snapshot = self.folder / "snapshots" / commit
        for name in entry["links"]:
            path = snapshot / name
            if _safe_name(name) and (path.is_symlink() or path.is_file()):
                path.unlink()
        for folder in sorted((p for p in snapshot.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if snapshot.is_dir() and not any(snapshot.iterdir()):
            snapshot.rmdir()
        ref = entry.get("ref")
        ref_path = self.folder / "refs" / str(ref)
        ours = ref and _safe_name(ref) and not snapshot.exists() and ref_path.is_file()
        if ours and ref_path.read_text().strip() == commit:
            ref_path.unlink()

    def _sweep_blobs(self, doc: dict[str, Any]) -> int:
        """Delete the recorded blobs that no snapshot links to and no commit still in the ledger needs, each
        under the client's lock for it.

        A commit in the ledger is either in use (its process may be about to link the blob) or was left by a
        stopped run: the next run then either fetches it (and finds the blob) or evicts it when it adopts the
        leftovers (:meth:`release` deletes the commit's entry before sweeping, so its blobs go then). So a
        resumed run that releases its tokenizer files before its walk has taken over the killed run's commits
        does not delete the small files those commits share with them.
        """
        needed = {b for e in doc["commits"].values() for b in e.get("needs", [])}
        freed = 0
        for blob, size in list(doc["blobs"].items()):
            path = self.folder / "blobs" / blob
            if not _ETAG.match(blob):
                doc["blobs"].pop(blob)
                continue
            if blob in needed:
                continue
            with FileLock(str(self.locks / f"{blob}.lock")):
                if blob in self._referenced_blobs():
                    continue
                if path.is_file():
                    path.unlink()
                    freed += int(size)
                doc["blobs"].pop(blob)
        return freed

    def _referenced_blobs(self) -> set[str]:
        snapshots = self.folder / "snapshots"
        if not snapshots.is_dir():
            return set()
        return {os.path.basename(os.readlink(p)) for p in snapshots.rglob("*") if p.is_symlink()}


def cache_bytes(folder: Path) -> int:
    """Bytes of a cached repository's blobs on disk, partial downloads included."""
    blobs = folder / "blobs"
    if not blobs.is_dir():
        return 0
    total = 0
    for p in blobs.iterdir():
        with contextlib.suppress(FileNotFoundError):  # deleted while we looked
            total += p.stat().st_size
    return total
