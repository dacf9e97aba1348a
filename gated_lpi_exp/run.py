"""One run, as a recipe: data -> checkpoints -> per-checkpoint stages -> dynamics -> tables/figures -> tracking.

Each finished checkpoint goes to the result store (:mod:`gated_lpi_exp.results`), so a killed or failed run
resumes where it stopped; launched as several processes, the run splits its checkpoints over them and
process 0 collects their results from that store and logs the one MLflow run (docs/scaling.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer, resolve_series
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import dataset_hash, load_relations, select_relations
from gated_lpi_exp.distributed import DistributedError, ProcessGroup
from gated_lpi_exp.errors import AttributionError, NonFiniteError
from gated_lpi_exp.results import CheckpointResult, ResultStore
from gated_lpi_exp.resume import RunState, attempt
from gated_lpi_exp.run_logging import log_figures, log_run_params, run_name, run_tags
from gated_lpi_exp.schemas import RelationSamples
from gated_lpi_exp.stages import diagnose
from gated_lpi_exp.stages.ablation import ablate_checkpoint, ablation_metrics
from gated_lpi_exp.stages.aggregates import CheckpointAggregate, ScoreSums
from gated_lpi_exp.stages.attribution import (
    AttributionOutcome,
    aggregate_arrays,
    attribute_checkpoint,
    head_scores,
    top_units,
)
from gated_lpi_exp.stages.dynamics import compute_dynamics, dynamics_metrics, layer_profiles
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint, hit_metrics, summarise_hits
from gated_lpi_exp.stages.retry import retry_out_of_memory
from gated_lpi_exp.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run computed (everything here is also in MLflow; empty on processes other than 0)."""

    run_id: str
    checkpoints: list[Checkpoint]
    tables: dict[str, pd.DataFrame]
    metrics: dict[str, float] = field(default_factory=dict)


def load_samples(cfg: RunConfig) -> pd.DataFrame:
    """The run's examples: the configured relation source, selection and template."""
    rel = cfg.relations
    samples = load_relations(rel.source, template=rel.template, duplicates=rel.duplicates)
    samples = select_relations(
        samples, names=rel.names or None, categories=None if rel.names else rel.categories
    )
    if rel.max_per_relation is not None:
        samples = samples.groupby("relation", sort=False).head(rel.max_per_relation)
    return RelationSamples.check(samples.reset_index(drop=True))


def run(cfg: RunConfig, *, hydra_tags: dict[str, str] | None = None) -> RunResult:
    """Execute one run (this process's share of it) and log it to MLflow.

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
    tracker = group.agree(lambda: Tracker(cfg.tracking) if group.is_main else NullTracker())
    series = group.agree(lambda: resolve_series(cfg.model, cfg.checkpoints, progress=cfg.progress))
    log.info("checkpoints: %d of %d (%s)", len(series.checkpoints), len(series.available), cfg.model.source)
    store = ResultStore(cfg, dataset_hash(samples))
    state = RunState(store.root, store.describe_run(series.checkpoints, cfg.tracking.experiment))
    plan = group.plan(series.checkpoints, cfg.execution.shard)
    with (
        tracker.run(run_name(cfg), tags=run_tags(cfg, hydra_tags)) as run_id,
        attempt(state, tracker, run_id) if group.is_main else nullcontext(),
    ):
        log_run_params(tracker, cfg, series, samples, [[c.step for c in part] for part in plan])
        mine = plan[group.rank]
        own = group.agree(lambda: walk_checkpoints(cfg, mine, samples, store, state, tracker, group))
        reused = group.gather({r.checkpoint.step: r.reused for r in own})
        if not group.is_main:
            return RunResult("", series.checkpoints, {})
        results = collect_results(cfg, own, reused, series.checkpoints, store, tracker)
        tables, final = report(cfg, results, tracker)
        log.info("done: run %s, final %s", run_id, {k: round(v, 3) for k, v in final.items() if "." not in k})
    return RunResult(run_id, series.checkpoints, tables, final)


def report(
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


def walk_checkpoints(
    cfg: RunConfig,
    checkpoints: list[Checkpoint],
    samples: pd.DataFrame,
    store: ResultStore,
    state: RunState,
    tracker: Tracker,
    group: ProcessGroup,
) -> list[CheckpointResult]:
    """This process's checkpoints in step order: each taken from the result store when an earlier run
    finished it, else computed and stored; logged as it completes."""
    tokenizer = None
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
                result, sums = analyse_checkpoint(cfg, model, tokenizer, samples, ckpt, store)
                del model
                state.record(ckpt.step, store.put(result, sums), group.rank)
        log_checkpoint(tracker, cfg, result)
        results.append(result)
    return results


def analyse_checkpoint(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint, store: ResultStore
) -> tuple[CheckpointResult, dict[str, ScoreSums] | None]:
    """Evaluation, attribution and ablation at one checkpoint; also the per-relation attribution sums."""
    batch = cfg.evaluation.batch_size
    with _bar(cfg, len(samples), f"HIT@k step {ckpt.step}") as bar:
        try:
            hits = evaluate_checkpoint(
                model, tokenizer, samples, step=ckpt.step, batch_size=batch, progress=bar
            )
        except NonFiniteError as exc:  # say where: layer, damaged weights or overflow
            raise diagnose.explain(exc, model, tokenizer, samples, ckpt.step, batch) from exc
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
    if cfg.ablation.name != "none":
        result.ablation = ablate_checkpoint(
            model, tokenizer, samples, hits, outcome.aggregate, outcome.sums, cfg.ablation,
            seed=cfg.seed, batch_size=cfg.evaluation.batch_size,
        )  # fmt: skip
    return result, outcome.sums


def attribution_stage(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint, store: ResultStore
) -> AttributionOutcome:
    """Gated-LPI at one checkpoint: shared with concurrent sweep jobs that need the same attribution,
    retried with smaller chunks on out-of-memory, and non-finite scores traced to a layer."""

    def attribute(budget_mb: int) -> AttributionOutcome:
        settings = replace(cfg.attribution, memory_budget_mb=budget_mb)
        with _bar(cfg, len(samples), f"Gated-LPI step {ckpt.step}") as bar:
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


def log_checkpoint(tracker: Tracker, cfg: RunConfig, result: CheckpointResult) -> None:
    """One checkpoint's metrics (at its training step) and its mean-score arrays."""
    step = result.checkpoint.step
    tracker.log_metrics(step_metrics(cfg, result), step=step)
    if result.aggregate is not None:
        tracker.log_arrays(aggregate_arrays(result.aggregate), f"attribution/step{step}.npz")


def step_metrics(cfg: RunConfig, result: CheckpointResult) -> dict[str, float]:
    metrics = hit_metrics(summarise_hits(result.hits, cfg.evaluation.ks), result.checkpoint.step)
    metrics["resume.from_store"] = float(result.reused)
    if result.aggregate is not None:
        agg = result.aggregate
        if not result.reused:  # time spent by this run
            metrics["time.attribution_s"] = result.attribution_seconds or 0.0
        metrics["attribution.from_cache"] = float(result.attribution_cached or result.reused)
        metrics["importance.ffn_layer.mean"] = float(agg.ffn_layer.mean())
        metrics["importance.attn_layer.mean"] = float(agg.attn_layer.mean())
    if result.ablation is not None:
        metrics.update(ablation_metrics(result.ablation))
    return metrics


def collect_tables(cfg: RunConfig, results: list[CheckpointResult]) -> dict[str, pd.DataFrame]:
    """The per-checkpoint outputs, concatenated over checkpoints."""
    hits = pd.concat([r.hits for r in results], ignore_index=True)
    tables = {"example_hits": hits, "hit_summary": summarise_hits(hits, cfg.evaluation.ks)}
    if cfg.attribution.enabled:
        tables["top_units"] = pd.concat([r.top_units for r in results], ignore_index=True)
        aggregates = attribution_aggregates(results)
        tables["head_scores"] = pd.concat([head_scores(a) for a in aggregates], ignore_index=True)
        tables["layer_profiles"] = layer_profiles(aggregates)
    if cfg.ablation.name != "none":
        tables["ablation"] = pd.concat([r.ablation for r in results], ignore_index=True)
    return tables


def dynamics_tables(
    cfg: RunConfig, results: list[CheckpointResult], tracker: Tracker
) -> dict[str, pd.DataFrame]:
    """Stability, concentration and consolidation over the checkpoints; curves and summaries to MLflow."""
    curves, summary = compute_dynamics(attribution_aggregates(results), cfg.dynamics)
    per_step, totals = dynamics_metrics(curves, summary)
    for step, values in sorted(per_step.items()):
        tracker.log_metrics(values, step=step)
    tracker.log_metrics(totals)
    return {"dynamics_curves": curves, "dynamics_summary": summary}


def attribution_aggregates(results: list[CheckpointResult]) -> list[CheckpointAggregate]:
    """Every checkpoint's attribution aggregate, in step order (attribution is enabled)."""
    aggregates = [r.aggregate for r in results if r.aggregate is not None]
    if len(aggregates) != len(results):
        raise ValueError("a checkpoint result has no attribution aggregate")
    return aggregates


def _bar(cfg: RunConfig, total: int, desc: str):
    return tqdm(total=total, desc=f"  {desc}", unit="ex", leave=False, disable=not cfg.progress)
