"""Download one hub checkpoint into the hub cache with the ordinary ``huggingface_hub`` client: pinned to its
commit, retried, resumed, and checked against the hashes the hub advertises.

- **Pinned**: every file comes from the commit the branch pointed at when the series was listed.
- **Retried**: a file whose download fails (network, 5xx, a truncated or corrupted transfer) is tried again,
  ``retries`` times with exponential backoff; a missing repository, revision or file is not retried.
- **Resumed**: the client resumes a transfer interrupted inside one download itself; a partial file left by a
  process that was killed (``blobs/<etag>.<id>.incomplete``) is completed from where it stopped with an HTTP
  range request, under the client's lock for that blob, instead of being downloaded again.
- **Verified**: each newly downloaded blob is hashed (sha256 for LFS files, the git blob id otherwise) and
  compared with what the hub advertised; a mismatch deletes it and counts as a failed attempt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from gated_lpi_exp.checkpoints.eviction import FetchLedger
from gated_lpi_exp.checkpoints.hub import HubSettings, RemoteFile, revision_files, snapshot_complete
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.errors import CheckpointError

log = logging.getLogger(__name__)
# The client's HTTP library logs every request at INFO, which drowns a run's log; failures still show.
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MAX_BACKOFF_S = 30.0


class DownloadCancelled(Exception):
    """The run stopped while this download was in progress."""


class CorruptDownload(Exception):
    """A downloaded file's content does not match the hash the hub advertised for it."""


@dataclass
class Fetched:
    """A checkpoint ready to load from the hub cache."""

    checkpoint: Checkpoint
    path: Path
    """Its snapshot folder (``<cache>/models--org--name/snapshots/<commit>``)."""
    bytes: int = 0
    """Bytes this call downloaded (0 when every file was already cached)."""
    seconds: float = 0.0


def content_hash(path: Path, etag: str) -> str:
    """The hash of ``path`` that its ETag names: sha256 (64 hex digits) or the git blob id (40)."""
    digest = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        while block := fh.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def _progress(on_bytes: Callable[[int], None] | None, cancel: threading.Event | None) -> type[tqdm]:
    """A silent progress class for the client: counts bytes, and stops a transfer when the run is cancelled."""

    class _Hook(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled()
            if on_bytes is not None and n:
                on_bytes(int(n))
            return super().update(n)

    return _Hook


class Downloader:
    """Downloads hub checkpoints into the hub cache, recording what it fetched in the cache's ledger.

    Args:
        settings: Hub endpoint, cache and offline flag.
        retries: Further attempts per file after a failed one.
        backoff_s: Wait before the first retry; doubled for each further one (at most 30 s).
        trust_remote_code: Also download the revision's ``*.py`` files.
        on_bytes: Called with the size of every chunk received (progress, disk accounting).
    """

    def __init__(
        self,
        settings: HubSettings,
        *,
        retries: int = 5,
        backoff_s: float = 1.0,
        trust_remote_code: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.settings = settings
        self.retries = retries
        self.backoff_s = backoff_s
        self.trust_remote_code = trust_remote_code
        self.on_bytes = on_bytes
        self._ledgers: dict[str, FetchLedger] = {}

    def ledger(self, repo_id: str) -> FetchLedger:
        if repo_id not in self._ledgers:
            self._ledgers[repo_id] = FetchLedger(self.settings, repo_id)
        return self._ledgers[repo_id]

    def fetch(
        self, checkpoint: Checkpoint, cancel: threading.Event | None = None, *, weights: bool = True
    ) -> Fetched:
        """Make ``checkpoint``'s files complete in the cache (offline: check they are) and say where they are.

        Args:
            checkpoint: Which revision (downloaded at its pinned commit).
            cancel: Set to stop the download.
            weights: False: only its small files (tokenizer, config; every needed file but ``*.safetensors``),
                e.g. to check the run's settings before any weight is downloaded.

        Raises:
            CheckpointError: a file could not be downloaded intact after every retry, or (offline) is missing.
            DownloadCancelled: ``cancel`` was set.
        """
        started = time.perf_counter()
        folder = self.settings.repo_folder(checkpoint.source)
        commit = checkpoint.commit
        if self.settings.offline or commit is None:
            return self._cached(checkpoint)
        files = self._retry(checkpoint, "the file list", lambda: self._list(checkpoint))
        if not weights:
            files = [f for f in files if not f.name.endswith(".safetensors")]
        ledger = self.ledger(checkpoint.source)
        ledger.acquire(commit, [f.etag for f in files])  # before looking at the cache: see FetchLedger
        fetched = 0
        for remote in files:
            fetched += self._retry(
                checkpoint, remote.name, lambda r=remote: self._file(checkpoint, r, cancel)
            )
        if weights:  # the branch's ref marks a downloaded revision; a weights-free fetch is not one
            self._write_ref(checkpoint, folder, ledger)
        seconds = time.perf_counter() - started
        if fetched:
            rate = fetched / max(seconds, 1e-9) / 1e6
            log.info(
                "step %d: downloaded %.1f MB in %.1f s (%.1f MB/s)",
                checkpoint.step,
                fetched / 1e6,
                seconds,
                rate,
            )
        return Fetched(checkpoint, folder / "snapshots" / commit, fetched, seconds)

    def _cached(self, checkpoint: Checkpoint) -> Fetched:
        folder = self.settings.repo_folder(checkpoint.source)
        commit = checkpoint.commit or _read_ref(folder, checkpoint.revision)
        snapshot = folder / "snapshots" / str(commit)
        if commit is None or not snapshot_complete(snapshot):
            raise CheckpointError(
                f"Checkpoint step {checkpoint.step} ({checkpoint.source}@{checkpoint.label}) is not complete in "
                f"the hub cache {self.settings.cache_dir} and HF_HUB_OFFLINE is set. Fix: unset HF_HUB_OFFLINE "
                "to download it, or point HF_HUB_CACHE at the cache that holds it."
            )
        return Fetched(checkpoint, snapshot)

    def _list(self, checkpoint: Checkpoint) -> list[RemoteFile]:
        return revision_files(checkpoint, self.settings, self.trust_remote_code)

    def _retry(self, checkpoint: Checkpoint, what: str, attempt: Callable):
        """Run ``attempt`` until it succeeds, retrying transient failures with exponential backoff."""
        from huggingface_hub.errors import (
            GatedRepoError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{what} of {checkpoint.source}@{checkpoint.label} (step {checkpoint.step}, commit {checkpoint.commit})"
        last: Exception | None = None
        for n in range(self.retries + 1):
            try:
                return attempt()
            except (DownloadCancelled, CheckpointError):
                raise
            except (
                RepositoryNotFoundError,
                RevisionNotFoundError,
                RemoteEntryNotFoundError,
                GatedRepoError,
            ) as exc:
                raise CheckpointError(
                    f"Could not download {where}: {type(exc).__name__}: {exc}. Fix: check that the repository "
                    "and branch still exist and that you have access (huggingface-cli login)."
                ) from exc
            except Exception as exc:  # network errors, 5xx, truncated or corrupted transfers: transient
                last = exc
                if n < self.retries:
                    wait = min(self.backoff_s * 2**n, MAX_BACKOFF_S)
                    log.warning("download of %s failed (%s: %s); retry %d of %d in %.0f s",
                                where, type(exc).__name__, exc, n + 1, self.retries, wait)  # fmt: skip
                    time.sleep(wait)
        if isinstance(last, CorruptDownload):
            raise CheckpointError(
                f"Could not download {where} intact: {last} (on all {self.retries + 1} attempts). The server sends "
                "content that does not match the hash it advertises. Fix: report it to the server's operator, "
                "or try another mirror (HF_ENDPOINT)."
            ) from last
        raise CheckpointError(
            f"Could not download {where} after {self.retries + 1} attempts: {type(last).__name__}: {last}. "
            "Fix: check the network and the hub (HF_ENDPOINT), or raise execution.download_retries; "
            "checkpoints already analysed are kept, so running the same command again resumes."
        ) from last

    def _file(self, checkpoint: Checkpoint, remote: RemoteFile, cancel: threading.Event | None) -> int:
        """Download one file (unless cached) and verify it; return the bytes downloaded."""
        from huggingface_hub import hf_hub_download

        folder = self.settings.repo_folder(checkpoint.source)
        commit = str(checkpoint.commit)
        pointer = folder / "snapshots" / commit / remote.name
        blob = folder / "blobs" / remote.etag
        if pointer.exists():  # a link to an existing blob: cached (by the user, or by this tool earlier)
            return 0
        new_blob = not blob.exists()
        resumed = self._resume_partial(checkpoint, remote, cancel) if new_blob else 0
        downloaded = new_blob and resumed == 0
        hf_hub_download(
            checkpoint.source, remote.name, revision=commit, cache_dir=self.settings.cache_dir,
            endpoint=self.settings.endpoint, tqdm_class=_progress(self.on_bytes, cancel),
        )  # fmt: skip
        if not pointer.exists():  # another process evicted the blob while the client linked it
            pointer.unlink(missing_ok=True)
            raise OSError(f"{pointer} lost its blob while it was being linked")
        if downloaded:
            self._verify(blob, pointer, remote)
        self.ledger(checkpoint.source).record(
            commit, remote.name, remote.etag if new_blob else None, remote.size
        )
        return remote.size if new_blob else 0

    def _verify(self, blob: Path, pointer: Path, remote: RemoteFile) -> None:
        actual = content_hash(blob, remote.etag)
        if actual != remote.etag:
            pointer.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            kind = "sha256" if remote.lfs else "git blob id"
            raise CorruptDownload(f"{remote.name} has {kind} {actual}, the hub advertised {remote.etag}")

    def _resume_partial(
        self, checkpoint: Checkpoint, remote: RemoteFile, cancel: threading.Event | None
    ) -> int:
        """Complete a partial download left by a killed process; return the bytes it still needed (0: none)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        folder = self.settings.repo_folder(checkpoint.source)
        blobs, blob = folder / "blobs", folder / "blobs" / remote.etag
        lock = self.settings.cache_dir / ".locks" / folder.name / f"{remote.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):  # the client holds it while it writes its own partial file
            partials = sorted(blobs.glob(f"{remote.etag}*.incomplete"), key=lambda p: p.stat().st_size)
            if blob.exists() or not partials:
                return 0
            for extra in partials[:-1]:
                extra.unlink()
            mine = blobs / f"{remote.etag}.{uuid.uuid4().hex[:8]}.incomplete"
            os.replace(partials[-1], mine)
            have = mine.stat().st_size
            if have > remote.size:
                mine.unlink()
                return 0
            log.info("step %d: resuming %s at byte %d of %d", checkpoint.step, remote.name, have, remote.size)
            url = hf_hub_url(
                checkpoint.source, remote.name, revision=checkpoint.commit, endpoint=self.settings.endpoint
            )
            with mine.open("ab") as fh:
                http_get(
                    url, fh, resume_size=have, headers=build_hf_headers(), expected_size=remote.size,
                    tqdm_class=_progress(self.on_bytes, cancel),
                )  # fmt: skip
            actual = content_hash(mine, remote.etag)
            if actual != remote.etag:
                mine.unlink()
                raise CorruptDownload(
                    f"{remote.name} (resumed) has hash {actual}, the hub advertised {remote.etag}"
                )
            os.replace(mine, blob)
        return remote.size - have

    def _write_ref(self, checkpoint: Checkpoint, folder: Path, ledger: FetchLedger) -> None:
        """``refs/<branch>`` -> commit, as the client writes when it downloads by branch (offline use needs it)."""
        if not checkpoint.revision or checkpoint.revision == checkpoint.commit:
            return
        ref = folder / "refs" / checkpoint.revision
        if ref.is_file():
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(str(checkpoint.commit))
        os.replace(tmp, ref)
        ledger.record_ref(str(checkpoint.commit), checkpoint.revision)


def _read_ref(folder: Path, revision: str | None) -> str | None:
    path = folder / "refs" / str(revision)
    return path.read_text().strip() if revision and path.is_file() else None
