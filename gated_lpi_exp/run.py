"""One run, as a recipe: data -> checkpoints -> per-checkpoint stages -> dynamics -> tables/figures -> tracking.

How the checkpoints are executed (the result store that makes a killed or failed run resume where it stopped,
the processes of a multi-process run, out-of-memory retries) lives in :mod:`gated_lpi_exp.execution`; what is
logged, in :mod:`gated_lpi_exp.tracking` (docs/scaling.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate, ScoreSums
from gated_lpi_exp.checkpoints.loading import load_tokenizer, resolve_series
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.compat import compat_mode
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import dataset_hash, load_relations, select_relations
from gated_lpi_exp.data.batches import token_fingerprint
from gated_lpi_exp.execution.attempts import attempt
from gated_lpi_exp.execution.preflight import check_before_compute
from gated_lpi_exp.execution.process_group import ProcessGroup
from gated_lpi_exp.execution.stage_guards import attribution_stage, evaluation_stage
from gated_lpi_exp.execution.walk import tokenizer_files, walk_all
from gated_lpi_exp.schemas import RelationSamples
from gated_lpi_exp.stages.ablation import ablate_checkpoint
from gated_lpi_exp.stages.attribution import head_scores, top_units
from gated_lpi_exp.stages.dynamics import compute_dynamics, dynamics_metrics, layer_profiles
from gated_lpi_exp.stages.evaluation import hit_metrics, summarise_hits
from gated_lpi_exp.storage.results import CheckpointResult, ResultStore, result_root
from gated_lpi_exp.storage.run_state import RunState
from gated_lpi_exp.tracking.describe import run_description
from gated_lpi_exp.tracking.run_logging import log_figures, log_run_params, run_name, run_tags
from gated_lpi_exp.tracking.sweep import sweep_parent
from gated_lpi_exp.tracking.tracker import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run computed (everything here is also in MLflow; empty on processes other than 0)."""

    run_id: str
    checkpoints: list[Checkpoint]
    tables: dict[str, pd.DataFrame]
    metrics: dict[str, float] = field(default_factory=dict)
    url: str = ""
    """Where to look at the run: its page in the MLflow UI, or how to open it."""
    parent_run_id: str | None = None
    """The parent run of the ``-m`` sweep this run belongs to."""


def load_samples(cfg: RunConfig) -> pd.DataFrame:
    """The run's examples: the configured relation source, selection and template."""
    rel = cfg.relations
    samples = load_relations(rel.source, template=rel.template, duplicates=rel.duplicates)
    samples = select_relations(
        samples, names=rel.names or None, categories=None if rel.names else rel.categories
    )
    changes = samples.attrs.get("changes", [])
    if rel.max_per_relation is not None:
        samples = samples.groupby("relation", sort=False).head(rel.max_per_relation)
    samples = RelationSamples.check(samples.reset_index(drop=True))
    samples.attrs["changes"] = changes  # the cleaning report of the selected relations, logged with the run
    return samples


def run(
    cfg: RunConfig, *, hydra_tags: dict[str, str] | None = None, sweep_dir: str | None = None
) -> RunResult:
    """Execute one run (this process's share of it) and log it to MLflow.

    The README's stages in order: the examples (:func:`load_samples`), the checkpoint series, the
    per-checkpoint stages (:func:`analyse_checkpoint`, over this process's share of the checkpoints), then
    dynamics, tables, figures and final metrics (:func:`summarise_run`), all in one MLflow run (nested under
    the sweep's parent run when ``sweep_dir``, the folder of a ``-m`` sweep, is given).

    Raises:
        GatedLPIError: bad input, with the problem and its fix; checkpoints finished before it stay in the
            result store, and a rerun resumes after them.
    """
    torch.manual_seed(cfg.seed)
    group = ProcessGroup.current(cfg.model.device, cfg.execution.timeout_min)
    samples = load_samples(cfg)
    n_relations = samples["relation"].nunique()
    log.info("data: %d examples, %d relations (%s)", len(samples), n_relations, cfg.relations.source)
    # A dead tracking server fails here, before any compute. Only process 0 logs.
    spool = result_root(cfg) / "spool"
    tracker = group.agree(lambda: Tracker(cfg.tracking, spool) if group.is_main else NullTracker())
    series = group.agree(lambda: resolve_series(cfg.model, cfg.checkpoints, progress=cfg.progress))
    log.info("checkpoints: %d of %d (%s)", len(series.checkpoints), len(series.available), cfg.model.source)
    # The series' tokenizer, once: the settings are checked against it and the model before any compute
    # (a hub series: from the first checkpoint's tokenizer and config files, downloaded without weights).
    first = series.checkpoints[0]
    with tokenizer_files(cfg, first) as folder:
        tokenizer = load_tokenizer(cfg.model, first, folder)
        checked = check_before_compute(cfg, first, tokenizer, samples, folder)
    store = ResultStore(cfg, dataset_hash(samples), token_fingerprint(tokenizer, samples))
    state = RunState(store.root, store.describe_run(series.checkpoints, cfg.tracking.experiment))
    plan = group.plan(series.checkpoints, cfg.execution.shard)

    def analyse(model, tokenizer, ckpt: Checkpoint) -> tuple[CheckpointResult, dict[str, ScoreSums] | None]:
        with compat_mode(cfg.attribution.compat, model):  # e.g. the released notebooks' scoring, every stage
            return analyse_checkpoint(cfg, model, tokenizer, samples, ckpt, store)

    parent = sweep_parent(tracker, sweep_dir) if sweep_dir and group.is_main else None
    with (
        tracker.run(
            run_name(cfg),
            tags=run_tags(cfg, hydra_tags),
            parent_run_id=parent,
            description=run_description(cfg, series, samples),
            system_metrics=cfg.tracking.system_metrics,
        ) as run_id,
        attempt(state, tracker, run_id) if group.is_main else nullcontext(),
    ):
        log_run_params(tracker, cfg, series, samples, [[c.step for c in part] for part in plan])
        tracker.log_params(checked)
        results = walk_all(cfg, series.checkpoints, analyse, store, state, tracker, group, tokenizer)
        if results is None:  # not process 0: its results reach process 0 through the result store
            return RunResult("", series.checkpoints, {})
        tables, final = summarise_run(cfg, results, tracker)
        log.info("done: run %s", run_id)
    return RunResult(run_id, series.checkpoints, tables, final, tracker.run_url(run_id), parent)


def summarise_run(
    cfg: RunConfig, results: list[CheckpointResult], tracker: Tracker
) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """Tables (with the dynamics over checkpoints), figures and final metrics of the whole run, logged."""
    tables = collect_tables(cfg, results)
    if cfg.attribution.enabled and len(results) >= 2:
        tables.update(dynamics_tables(cfg, results, tracker))
    for name, table in tables.items():
        tracker.log_table(table, name)
    log_figures(cfg, tables, tracker)
    from_store = [r.checkpoint.step for r in results if r.reused]
    tracker.log_params({"run.reused_steps": ",".join(map(str, from_store)) or "none"})
    final = hit_metrics(tables["hit_summary"], results[-1].checkpoint.step)
    tracker.log_metrics({f"final.{k}": v for k, v in final.items()} | {"resume.n_reused": len(from_store)})
    return tables, final


def analyse_checkpoint(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint, store: ResultStore
) -> tuple[CheckpointResult, dict[str, ScoreSums] | None]:
    """Evaluation, attribution and ablation at one checkpoint; also the per-relation attribution sums."""
    hits = evaluation_stage(cfg, model, tokenizer, samples, ckpt)
    result = CheckpointResult(ckpt, hits)
    if not cfg.attribution.enabled:
        return result, None

    started = time.perf_counter()
    outcome = attribution_stage(cfg, model, tokenizer, samples, ckpt, store)
    log.info(
        "step %d: attribution of %d relations computed, %d from cache",
        ckpt.step,
        outcome.computed_relations,
        outcome.cached_relations,
    )
    result.attribution_seconds = time.perf_counter() - started
    result.attribution_cached = outcome.computed_relations == 0
    result.aggregate = outcome.aggregate
    result.top_units = top_units(outcome.aggregate, model, cfg.attribution.top_n_logged)
    if cfg.ablation.enabled:
        result.ablation, result.ablation_examples = ablate_checkpoint(
            model, tokenizer, samples, hits, outcome.aggregate, outcome.sums, cfg.ablation,
            seed=cfg.seed, batch_size=cfg.evaluation.batch_size, statistics=cfg.statistics,
        )  # fmt: skip
    return result, outcome.sums


def collect_tables(cfg: RunConfig, results: list[CheckpointResult]) -> dict[str, pd.DataFrame]:
    """The per-checkpoint outputs, concatenated over checkpoints."""
    hits = pd.concat([r.hits for r in results], ignore_index=True)
    tables = {"example_hits": hits, "hit_summary": summarise_hits(hits, cfg.evaluation.ks, cfg.statistics)}
    if cfg.attribution.enabled:
        tables["top_units"] = pd.concat([r.top_units for r in results], ignore_index=True)
        aggregates = attribution_aggregates(results)
        tables["head_scores"] = pd.concat([head_scores(a) for a in aggregates], ignore_index=True)
        tables["layer_profiles"] = layer_profiles(aggregates)
    if cfg.ablation.enabled:
        tables["ablation"] = pd.concat([r.ablation for r in results], ignore_index=True)
        tables["ablation_examples"] = pd.concat([r.ablation_examples for r in results], ignore_index=True)
    return tables


def dynamics_tables(
    cfg: RunConfig, results: list[CheckpointResult], tracker: Tracker
) -> dict[str, pd.DataFrame]:
    """Stability, concentration and consolidation over the checkpoints; curves and summaries to MLflow."""
    tables = compute_dynamics(attribution_aggregates(results), cfg.dynamics, cfg.statistics)
    per_step, totals = dynamics_metrics(tables)
    for step, values in sorted(per_step.items()):
        tracker.log_metrics(values, step=step)
    tracker.log_metrics(totals)
    return tables


def attribution_aggregates(results: list[CheckpointResult]) -> list[CheckpointAggregate]:
    """Every checkpoint's attribution aggregate, in step order (attribution is enabled)."""
    aggregates = [r.aggregate for r in results if r.aggregate is not None]
    if len(aggregates) != len(results):
        raise ValueError("a checkpoint result has no attribution aggregate")
    return aggregates
