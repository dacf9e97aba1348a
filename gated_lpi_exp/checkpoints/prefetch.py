"""Checkpoints downloaded ahead of their use, and evicted after it, so a sweep holds a bounded number.

:class:`Prefetcher` fetches items in order in one background thread (bandwidth is shared anyway, so parallel
downloads would not finish sooner), at most ``ahead`` beyond the item in use: it holds ``ahead + 1`` slots,
takes one before each fetch and gets it back when the consumer is :meth:`~Prefetcher.done` with the item.
:class:`CheckpointFeed` puts the hub downloader, the cache ledger and the ``execution.keep_checkpoints`` policy
behind it, so the checkpoint walk only asks where a checkpoint is and says when it is finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gated_lpi_exp.checkpoints.download import DownloadCancelled, Downloader, Fetched
from gated_lpi_exp.checkpoints.eviction import FetchLedger, cache_bytes
from gated_lpi_exp.checkpoints.hub import HubSettings
from gated_lpi_exp.checkpoints.resolve import Checkpoint

log = logging.getLogger(__name__)

T = TypeVar("T")
JOIN_TIMEOUT_S = 60.0


class Prefetcher(Generic[T]):
    """Run ``fetch`` over ``items`` in order in a background thread, at most ``ahead`` items beyond the one
    the consumer holds.

    Args:
        items: What to fetch, in the order the consumer uses it.
        fetch: ``fetch(item, cancel) -> T``; ``cancel`` is set when the consumer stops early.
        ahead: Items fetched beyond the one in use (0: fetch each only when the previous one is done).
    """

    def __init__(
        self, items: Sequence[Checkpoint], fetch: Callable[[Checkpoint, threading.Event], T], ahead: int
    ):
        self.items = list(items)
        self.fetch = fetch
        self.cancel = threading.Event()
        self.wait_s = 0.0
        """Time the consumer spent waiting for fetches."""
        self._slots = threading.Semaphore(ahead + 1)
        self._window = ahead + 1
        self._held: set[int] = set()
        self._all: dict[int, Future[T]] = {c.step: Future() for c in self.items}
        self._futures = dict(self._all)
        """The futures the consumer is not done with."""
        self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)

    def __enter__(self) -> Prefetcher[T]:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.cancel.set()
        self._thread.join(JOIN_TIMEOUT_S if exc_type is not None else None)

    def _work(self) -> None:
        for item in self.items:
            while not self._slots.acquire(timeout=0.2):
                if self.cancel.is_set():
                    return
            future = self._all[item.step]
            if self.cancel.is_set() or not future.set_running_or_notify_cancel():
                self._slots.release()
                if self.cancel.is_set():
                    return
                continue
            try:
                future.set_result(self.fetch(item, self.cancel))
            except BaseException as exc:  # handed to the consumer, which decides
                future.set_exception(exc)

    def get(self, item: Checkpoint) -> T:
        """``item``'s fetch result, waiting for it; raises what the fetch raised."""
        self._held.add(item.step)
        if len(self._held) > self._window:
            raise RuntimeError(
                f"{len(self._held)} items in use but only {self._window} may be fetched at once: call done() "
                "on an item before asking for one beyond the prefetch window"
            )
        started = time.perf_counter()
        try:
            return self._futures[item.step].result()
        finally:
            self.wait_s += time.perf_counter() - started

    def done(self, item: Checkpoint, cleanup: Callable[[], None] | None = None) -> None:
        """The consumer is finished with ``item``: once its fetch has ended, ``cleanup`` runs (e.g. eviction),
        and only then does its slot go to the next fetch, so fetched items never exceed the slots."""
        self._held.discard(item.step)
        future = self._futures.pop(item.step)
        if future.cancel():  # not started yet: it never took a slot
            return
        future.exception()  # wait for it to end, whatever the outcome
        try:
            if cleanup is not None:
                cleanup()
        finally:
            self._slots.release()

    def started(self) -> list[Checkpoint]:
        """Items whose fetch started and that the consumer is not done with."""
        futures = self._futures
        return [c for c in self.items if (f := futures.get(c.step)) and (f.running() or f.done())]


@dataclass
class FeedStats:
    """What a feed downloaded and evicted, and what its downloads cost the walk."""

    downloaded_bytes: int = 0
    download_seconds: float = 0.0
    wait_seconds: float = 0.0
    """Time the walk waited for downloads (0 when they were all hidden behind compute)."""
    disk_peak_bytes: int = 0
    """Peak growth of the repository's blobs in the hub cache over their size when the feed started."""
    evicted_bytes: int = 0
    failed_steps: list[int] = field(default_factory=list)
    walk_seconds: float = 0.0
    """Wall time of the walk the feed served (set by the walk)."""


class CheckpointFeed:
    """Where each checkpoint of a walk is loaded from; hub checkpoints downloaded ahead and evicted after.

    Args:
        checkpoints: The checkpoints the walk will compute, in order (those whose results are stored
            already are left out: they are not downloaded).
        keep: ``none`` (evict what this run downloaded once a checkpoint is done) or ``all``.
        ahead: Checkpoints downloaded beyond the one in use.
        downloader: The hub downloader; None for local series (nothing to download).
    """

    def __init__(self, checkpoints: Sequence[Checkpoint], keep: str = "none", ahead: int = 1,
                 downloader: Downloader | None = None):  # fmt: skip
        self.keep = keep
        self.stats = FeedStats()
        self.downloader = downloader
        self._lock = threading.Lock()
        self._base = 0
        self._prefetcher: Prefetcher[Fetched] | None = None
        if downloader is not None and checkpoints:
            self.repo = checkpoints[0].source
            self.folder = downloader.settings.repo_folder(self.repo)
            downloader.on_bytes = self._sample
            self._prefetcher = Prefetcher(checkpoints, self._fetch, ahead)

    @classmethod
    def for_hub(cls, checkpoints: Sequence[Checkpoint], *, keep: str, ahead: int, retries: int,
                trust_remote_code: bool = False, settings: HubSettings | None = None) -> CheckpointFeed:  # fmt: skip
        """A feed that downloads through ``huggingface_hub`` (settings from the standard variables)."""
        downloader = Downloader(
            settings or HubSettings.from_env(), retries=retries, trust_remote_code=trust_remote_code
        )
        return cls(checkpoints, keep, ahead, downloader)

    def __enter__(self) -> CheckpointFeed:
        if self._prefetcher is not None:
            self._base = cache_bytes(self.folder)
            self._adopt_leftovers()
            self._prefetcher.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        prefetcher = self._prefetcher
        if prefetcher is None:
            return
        prefetcher.__exit__(*exc)
        self.stats.wait_seconds = prefetcher.wait_s
        ledger = self._ledger()
        for ckpt in prefetcher.started():  # the walk stopped early: a rerun finds these files
            if ckpt.commit:
                ledger.disown(ckpt.commit)

    def path(self, ckpt: Checkpoint) -> str | None:
        """The local folder of ``ckpt``'s download, waiting for it; None when nothing is downloaded (a local
        series: load from ``ckpt.source``).

        Raises:
            CheckpointError: its download failed for good (the message names the file and the fix).
        """
        if self._prefetcher is None:
            return None
        return str(self._prefetcher.get(ckpt).path)

    def done(self, ckpt: Checkpoint, *, failed: bool = False) -> None:
        """The walk is finished with ``ckpt`` (its results are stored, or it failed): evict it per ``keep``."""
        if self._prefetcher is None:
            return
        if failed:
            self.stats.failed_steps.append(ckpt.step)
        self._prefetcher.done(ckpt, lambda: self._release(ckpt))

    def _release(self, ckpt: Checkpoint) -> None:
        if not ckpt.commit or self.downloader is None or self.downloader.settings.offline:
            return
        freed = self._ledger().release(ckpt.commit, evict=self.keep == "none")
        with self._lock:
            self.stats.evicted_bytes += freed
        if freed:
            log.info("step %d: evicted %.1f MB from the hub cache", ckpt.step, freed / 1e6)

    def _fetch(self, ckpt: Checkpoint, cancel: threading.Event) -> Fetched:
        assert self.downloader is not None
        fetched = self.downloader.fetch(ckpt, cancel)
        with self._lock:
            self.stats.downloaded_bytes += fetched.bytes
            self.stats.download_seconds += fetched.seconds if fetched.bytes else 0.0
        return fetched

    def _sample(self, incoming: int) -> None:
        """Called before each received chunk is written: the disk it will take counts already."""
        held = cache_bytes(self.folder) + incoming - self._base
        with self._lock:
            self.stats.disk_peak_bytes = max(self.stats.disk_peak_bytes, held)

    def _ledger(self) -> FetchLedger:
        assert self.downloader is not None
        return self.downloader.ledger(self.repo)

    def _adopt_leftovers(self) -> None:
        """Entries of runs that were killed: kept for this run when it needs them, else evicted (or kept)."""
        if self.downloader is None or self.downloader.settings.offline or self._prefetcher is None:
            return
        needed = {c.commit for c in self._prefetcher.items}
        ledger = self._ledger()
        for commit in ledger.abandoned():
            if commit in needed:
                continue
            ledger.acquire(commit)
            freed = ledger.release(commit, evict=self.keep == "none")
            if freed:
                log.info(
                    "evicted %.1f MB left in the hub cache by a stopped run (commit %s)", freed / 1e6, commit
                )


@contextmanager
def small_files(checkpoint: Checkpoint, *, keep: str, retries: int, trust_remote_code: bool = False,
                settings: HubSettings | None = None) -> Iterator[str]:  # fmt: skip
    """The local folder of a hub ``checkpoint``'s tokenizer and config files (no weights), downloaded at its
    pinned commit and recorded in the cache's ledger like the walk's downloads.

    They are held (no other run's eviction deletes them) until the block ends, then released as ``keep``
    says (``none``: what this call downloaded is evicted). A resumed run whose first checkpoint is stored
    already downloads these small files only, never its weights.

    Raises:
        CheckpointError: a file could not be downloaded intact after every retry, or (offline) is missing.
    """
    downloader = Downloader(
        settings or HubSettings.from_env(), retries=retries, trust_remote_code=trust_remote_code
    )
    try:
        yield str(downloader.fetch(checkpoint, weights=False).path)
    finally:
        if checkpoint.commit and not downloader.settings.offline:
            freed = downloader.ledger(checkpoint.source).release(checkpoint.commit, evict=keep == "none")
            log.debug("step %d: tokenizer and config released (%d bytes evicted)", checkpoint.step, freed)


__all__ = ["CheckpointFeed", "DownloadCancelled", "FeedStats", "Prefetcher", "small_files"]
