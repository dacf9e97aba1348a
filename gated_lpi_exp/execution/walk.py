"""The walk over a run's checkpoints: each process takes its share in step order, each checkpoint is taken
from the result store when an earlier run finished it (else analysed and stored), and process 0 collects
every process's results from that store (docs/scaling.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution.aggregate import ScoreSums
from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.execution.process_group import DistributedError, ProcessGroup
from gated_lpi_exp.storage.results import CheckpointResult, ResultStore
from gated_lpi_exp.storage.run_state import RunState
from gated_lpi_exp.tracking.run_logging import log_checkpoint
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
    their results in step order on process 0, None on the others. ``tokenizer``: the series' tokenizer
    (None: loaded from the first checkpoint a process computes)."""
    mine = group.shard(checkpoints, cfg.execution.shard)
    own = group.agree(lambda: walk_checkpoints(cfg, mine, analyse, store, state, tracker, group, tokenizer))
    reused = group.gather({r.checkpoint.step: r.reused for r in own})
    if not group.is_main:
        return None
    return collect_results(cfg, own, reused, checkpoints, store, tracker)


def walk_checkpoints(
    cfg: RunConfig,
    checkpoints: list[Checkpoint],
    analyse: Analyse,
    store: ResultStore,
    state: RunState,
    tracker: Tracker,
    group: ProcessGroup,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[CheckpointResult]:
    """This process's checkpoints in step order: each taken from the result store when an earlier run
    finished it, else computed and stored; logged as it completes."""
    results = []
    bar = tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not cfg.progress)
    for ckpt in bar:
        bar.set_postfix(step=ckpt.step)
        with store.lock(ckpt):  # the same checkpoint in another process with the same inputs waits
            result = store.get(ckpt) if cfg.execution.resume else None
            if result is not None:
                log.info("step %d: result from the result store, not recomputed", ckpt.step)
            else:
                tokenizer = tokenizer or load_tokenizer(cfg.model, ckpt)
                model = load_checkpoint(cfg.model, ckpt, device=group.device)
                result, sums = analyse(model, tokenizer, ckpt)
                del model
                state.record(ckpt.step, store.put(result, sums), group.rank)
        log_checkpoint(tracker, cfg, result)
        results.append(result)
    return results


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
