"""The evaluation and attribution stages as a run executes them: with progress bars, non-finite values
traced to the layer they start at, and attribution retried with smaller chunks on out-of-memory and shared
with concurrent sweep jobs that need the same attribution."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import pandas as pd
from tqdm.auto import tqdm

from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.errors import AttributionError, NonFiniteError
from gated_lpi_exp.execution import diagnose
from gated_lpi_exp.execution.retry import retry_out_of_memory
from gated_lpi_exp.stages.attribution import AttributionOutcome, attribute_checkpoint
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint
from gated_lpi_exp.storage.results import ResultStore


def evaluation_stage(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint
) -> pd.DataFrame:
    """HIT@k at one checkpoint (:func:`evaluate_checkpoint`); non-finite model outputs traced to a layer."""
    batch = cfg.evaluation.batch_size
    with stage_bar(cfg, len(samples), f"HIT@k step {ckpt.step}") as bar:
        try:
            return evaluate_checkpoint(
                model, tokenizer, samples, step=ckpt.step, batch_size=batch, progress=bar
            )
        except NonFiniteError as exc:  # say where: layer, damaged weights or overflow
            raise diagnose.explain(exc, model, tokenizer, samples, ckpt.step, batch) from exc


def attribution_stage(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint, store: ResultStore
) -> AttributionOutcome:
    """Gated-LPI at one checkpoint: shared with concurrent sweep jobs that need the same attribution,
    retried with smaller chunks on out-of-memory, and non-finite scores traced to a layer."""

    def attribute(budget_mb: int) -> AttributionOutcome:
        settings = replace(cfg.attribution, memory_budget_mb=budget_mb)
        with stage_bar(cfg, len(samples), f"Gated-LPI step {ckpt.step}") as bar:
            try:
                return attribute_checkpoint(
                    model, tokenizer, samples, ckpt, settings, dtype=cfg.model.dtype, progress=bar
                )
            except AttributionError as exc:  # say where: checkpoint, layer, damaged weights or overflow
                batch = cfg.evaluation.batch_size
                raise diagnose.explain(exc, model, tokenizer, samples, ckpt.step, batch) from exc

    # Sweep jobs needing this attribution wait here, then take it from the attribution cache.
    with store.attribution_lock(ckpt) if cfg.attribution.use_cache else nullcontext():
        return retry_out_of_memory(
            attribute,
            cfg.attribution.memory_budget_mb,
            cfg.attribution.min_memory_budget_mb,
            where=f"checkpoint step {ckpt.step}",
        )


def stage_bar(cfg: RunConfig, total: int, desc: str):
    """A progress bar over one stage's examples, removed when done; drawn only on a terminal (a log file
    gets the log lines, not bar frames), never with ``progress=false``."""
    return tqdm(total=total, desc=f"  {desc}", unit="ex", leave=False, disable=bar_disabled(cfg.progress))


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a progress setting: None (draw only when stderr is a terminal) or True."""
    return None if progress else True
