"""The walk over a run's checkpoints: each process takes its share in step order, each checkpoint is taken
from the result store when an earlier run finished it (else analysed and stored), and process 0 collects
every process's results from that store (docs/scaling.md).

A hub series is downloaded by each process for its own share, ``execution.prefetch`` checkpoints ahead of
the one being analysed, and each downloaded checkpoint is evicted from the hub cache once its results are
stored (``execution.keep_checkpoints``); see :mod:`gated_lpi_exp.checkpoints.prefetch`. A checkpoint whose
download fails for good is skipped with a warning, or stops the run, as ``checkpoints.missing`` says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution.aggregate import ScoreSums
from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer
from gated_lpi_exp.checkpoints.prefetch import CheckpointFeed, FeedStats, small_files
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.execution.process_group import DistributedError, ProcessGroup
from gated_lpi_exp.execution.stage_guards import bar_disabled
from gated_lpi_exp.storage.results import CheckpointResult, ResultStore
from gated_lpi_exp.storage.run_state import RunState
from gated_lpi_exp.tracking.run_logging import log_checkpoint, log_walk
from gated_lpi_exp.tracking.tracker import Tracker

log = logging.getLogger(__name__)

Analyse = Callable[
    [PreTrainedModel, PreTrainedTokenizerBase, Checkpoint],
    tuple[CheckpointResult, "dict[str, ScoreSums] | None"],
]
"""The per-checkpoint stages: model, tokenizer, checkpoint -> its result and the attribution sums behind it."""


def walk_all(
    cfg: RunConfig,
    checkpoints: list[Checkpoint],
    analyse: Analyse,
    store: ResultStore,
    state: RunState,
    tracker: Tracker,
    group: ProcessGroup,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[CheckpointResult] | None:
    """Every process walks its share of the step-sorted ``checkpoints`` (``execution.shard``); return all
    their results in step order on process 0 (checkpoints skipped after a failed download left out), None on
    the others. ``tokenizer``: the series' tokenizer (None: loaded from the first checkpoint a process
    computes).

    Raises:
        CheckpointError: every checkpoint's download failed.
    """
    mine = group.shard(checkpoints, cfg.execution.shard)
    own, stats = group.agree(
        lambda: walk_checkpoints(cfg, mine, analyse, store, state, tracker, group, tokenizer)
    )
    parts = group.gather(({r.checkpoint.step: r.reused for r in own}, stats))
    if not group.is_main:
        return None
    every_stats = [p[1] for p in parts]
    log_walk(tracker, every_stats)
    skipped = {step for s in every_stats for step in s.failed_steps}
    walked = [c for c in checkpoints if c.step not in skipped]
    if not walked:
        raise CheckpointError(
            "Every checkpoint's download failed (see the warnings above); nothing was analysed. Fix: check the "
            "network and the hub, then run again."
        )
    return collect_results(cfg, own, [p[0] for p in parts], walked, store, tracker)


def walk_checkpoints(
    cfg: RunConfig,
    checkpoints: list[Checkpoint],
    analyse: Analyse,
    store: ResultStore,
    state: RunState,
    tracker: Tracker,
    group: ProcessGroup,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[list[CheckpointResult], FeedStats]:
    """This process's checkpoints in step order: each taken from the result store when an earlier run
    finished it, else downloaded (hub series), computed and stored; logged as it completes. Also what the
    downloads cost."""
    started = time.perf_counter()
    todo = [c for c in checkpoints if not (cfg.execution.resume and store.has(c))]
    results = []
    bar = tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=bar_disabled(cfg.progress))
    with checkpoint_feed(cfg, todo) as feed:
        for done, ckpt in enumerate(bar, 1):
            bar.set_postfix(step=ckpt.step)
            with store.lock(ckpt):  # the same checkpoint in another process with the same inputs waits
                result = store.get(ckpt) if cfg.execution.resume else None
                if result is not None:
                    log.info("step %d: result from the result store, not recomputed", ckpt.step)
                    if ckpt in todo:  # another process finished it meanwhile
                        feed.done(ckpt)
                else:
                    ready, path = downloaded(cfg, feed, ckpt)
                    if not ready:
                        continue
                    tokenizer = tokenizer or load_tokenizer(cfg.model, ckpt, path)
                    model = load_checkpoint(cfg.model, ckpt, device=group.device, path=path)
                    result, sums = analyse(model, tokenizer, ckpt)
                    del model
                    state.record(ckpt.step, store.put(result, sums), group.rank)
                    feed.done(ckpt)
            log_checkpoint(tracker, cfg, result)
            results.append(result)
            log.info("step %d: checkpoint %d of %d done", ckpt.step, done, len(checkpoints))
    feed.stats.walk_seconds = time.perf_counter() - started
    return results, feed.stats


def checkpoint_feed(cfg: RunConfig, todo: list[Checkpoint]) -> CheckpointFeed:
    """Where the walk loads checkpoints from: hub series downloaded ahead and evicted after; else in place."""
    if cfg.model.kind != "hub":
        return CheckpointFeed(todo)
    ex = cfg.execution
    return CheckpointFeed.for_hub(
        todo, keep=ex.keep_checkpoints, ahead=ex.prefetch, retries=ex.download_retries,
        trust_remote_code=cfg.model.trust_remote_code,
    )  # fmt: skip


def tokenizer_files(cfg: RunConfig, ckpt: Checkpoint) -> AbstractContextManager[str | None]:
    """The local folder of ``ckpt``'s tokenizer and config while the block runs: a hub checkpoint's small
    files downloaded at its commit (no weights), evicted after as ``execution.keep_checkpoints`` says;
    None for a local series (load from ``ckpt.source``)."""
    if cfg.model.kind != "hub":
        return nullcontext()
    ex = cfg.execution
    return small_files(
        ckpt, keep=ex.keep_checkpoints, retries=ex.download_retries,
        trust_remote_code=cfg.model.trust_remote_code,
    )  # fmt: skip


def downloaded(cfg: RunConfig, feed: CheckpointFeed, ckpt: Checkpoint) -> tuple[bool, str | None]:
    """Whether to analyse ``ckpt``, and the local folder of its download (None: load from its source).
    Not analysed: its download failed for good and ``checkpoints.missing=warn`` says to go on without it.

    Raises:
        CheckpointError: the download failed for good and ``checkpoints.missing=fail``.
    """
    try:
        return True, feed.path(ckpt)
    except CheckpointError as exc:
        feed.done(ckpt, failed=True)
        if cfg.checkpoints.missing == "fail":
            raise
        log.warning(
            "step %d skipped: %s (checkpoints.missing=warn; =fail stops the run instead)", ckpt.step, exc
        )
        return False, None


def collect_results(
    cfg: RunConfig,
    own: list[CheckpointResult],
    reused: list[dict[int, bool]],
    checkpoints: list[Checkpoint],
    store: ResultStore,
    tracker: Tracker,
) -> list[CheckpointResult]:
    """All checkpoints' results in step order: this process's, and the other processes' from the result
    store (``reused``: each process's step -> taken-from-store flags), which are logged here."""
    by_step = {r.checkpoint.step: r for r in own}
    flags = {step: flag for part in reused for step, flag in part.items()}
    for ckpt in checkpoints:
        if ckpt.step in by_step:
            continue
        result = store.get(ckpt)
        if result is None:
            raise DistributedError(
                f"Step {ckpt.step} was finished by another process but is not in the result store "
                f"{store.root}. Fix: set execution.result_dir to a folder every process can read."
            )
        result.reused = flags.get(ckpt.step, True)
        log_checkpoint(tracker, cfg, result)
        by_step[ckpt.step] = result
    return [by_step[c.step] for c in checkpoints]
