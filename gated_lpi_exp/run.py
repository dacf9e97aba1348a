"""One run, as a recipe: data -> checkpoints -> per-checkpoint stages -> dynamics -> tables/figures -> tracking."""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from gated_lpi_exp import __version__
from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer, resolve_series
from gated_lpi_exp.checkpoints.resolve import Checkpoint, Resolution
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import dataset_hash, load_relations, select_relations
from gated_lpi_exp.plots import (
    plot_ablation,
    plot_concentration,
    plot_hit_curves,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
)
from gated_lpi_exp.schemas import CheckpointTable, RelationSamples
from gated_lpi_exp.stages.ablation import ablate_checkpoint, ablation_metrics
from gated_lpi_exp.stages.aggregates import CheckpointAggregate
from gated_lpi_exp.stages.attribution import aggregate_arrays, attribute_checkpoint, head_scores, top_units
from gated_lpi_exp.stages.dynamics import compute_dynamics, dynamics_metrics, layer_profiles
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint, hit_metrics, summarise_hits
from gated_lpi_exp.tracking import Tracker, flatten

log = logging.getLogger(__name__)


@dataclass
class CheckpointResult:
    """What the per-checkpoint stages computed at one checkpoint."""

    checkpoint: Checkpoint
    hits: pd.DataFrame
    aggregate: CheckpointAggregate | None = None
    top_units: pd.DataFrame | None = None
    ablation: pd.DataFrame | None = None
    attribution_seconds: float | None = None
    attribution_cached: bool = False


@dataclass
class RunResult:
    """What a finished run computed (everything here is also in MLflow)."""

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
    """Execute one run and log it to MLflow. Raises a ``GatedLPIError`` with a fix on bad input."""
    torch.manual_seed(cfg.seed)
    samples = load_samples(cfg)
    log.info(
        "data: %d examples, %d relations (%s)",
        len(samples),
        samples["relation"].nunique(),
        cfg.relations.source,
    )
    tracker = Tracker(cfg.tracking)  # a dead tracking server fails here, before any compute
    series = resolve_series(cfg.model, cfg.checkpoints, progress=cfg.progress)
    log.info("checkpoints: %d of %d (%s)", len(series.checkpoints), len(series.available), cfg.model.source)
    with tracker.run(run_name(cfg), tags=run_tags(cfg, hydra_tags)) as run_id:
        log_run_params(tracker, cfg, series, samples)
        results = walk_checkpoints(cfg, series.checkpoints, samples, tracker)
        tables = collect_tables(cfg, results)
        if cfg.attribution.enabled and len(results) >= 2:
            tables.update(dynamics_tables(cfg, results, tracker))
        for name, table in tables.items():
            tracker.log_table(table, name)
        log_figures(cfg, tables, tracker)
        final = hit_metrics(tables["hit_summary"], series.checkpoints[-1].step)
        tracker.log_metrics({f"final.{k}": v for k, v in final.items()})
        log.info("done: run %s, final %s", run_id, {k: round(v, 3) for k, v in final.items() if "." not in k})
    return RunResult(run_id, series.checkpoints, tables, final)


def walk_checkpoints(
    cfg: RunConfig, checkpoints: list[Checkpoint], samples: pd.DataFrame, tracker: Tracker
) -> list[CheckpointResult]:
    """Run the per-checkpoint stages in step order, logging each step's metrics as it completes."""
    tokenizer = load_tokenizer(cfg.model, checkpoints[0])
    results = []
    bar = tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not cfg.progress)
    for ckpt in bar:
        bar.set_postfix(step=ckpt.step)
        model = load_checkpoint(cfg.model, ckpt)
        result = analyse_checkpoint(cfg, model, tokenizer, samples, ckpt)
        tracker.log_metrics(step_metrics(cfg, result), step=ckpt.step)
        if result.aggregate is not None:
            tracker.log_arrays(aggregate_arrays(result.aggregate), f"attribution/step{ckpt.step}.npz")
        results.append(result)
        del model
    return results


def analyse_checkpoint(
    cfg: RunConfig, model, tokenizer, samples: pd.DataFrame, ckpt: Checkpoint
) -> CheckpointResult:
    """Evaluation, attribution and ablation at one checkpoint."""
    with _bar(cfg, len(samples), f"HIT@k step {ckpt.step}") as bar:
        hits = evaluate_checkpoint(
            model, tokenizer, samples, step=ckpt.step, batch_size=cfg.evaluation.batch_size, progress=bar
        )
    result = CheckpointResult(ckpt, hits)
    if not cfg.attribution.enabled:
        return result
    started = time.perf_counter()
    with _bar(cfg, len(samples), f"Gated-LPI step {ckpt.step}") as bar:
        outcome = attribute_checkpoint(
            model, tokenizer, samples, ckpt, cfg.attribution, dtype=cfg.model.dtype, progress=bar
        )
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
            model,
            tokenizer,
            samples,
            outcome.aggregate,
            outcome.sums,
            cfg.ablation,
            seed=cfg.seed,
            batch_size=cfg.evaluation.batch_size,
        )
    return result


def step_metrics(cfg: RunConfig, result: CheckpointResult) -> dict[str, float]:
    metrics = hit_metrics(summarise_hits(result.hits, cfg.evaluation.ks), result.checkpoint.step)
    if result.aggregate is not None:
        agg = result.aggregate
        metrics["time.attribution_s"] = result.attribution_seconds or 0.0
        metrics["attribution.from_cache"] = float(result.attribution_cached)
        metrics.update(
            {
                "importance.ffn_layer.mean": float(agg.ffn_layer.mean()),
                "importance.attn_layer.mean": float(agg.attn_layer.mean()),
            }
        )
    if result.ablation is not None:
        metrics.update(ablation_metrics(result.ablation))
    return metrics


def collect_tables(cfg: RunConfig, results: list[CheckpointResult]) -> dict[str, pd.DataFrame]:
    """The per-checkpoint outputs, concatenated over checkpoints."""
    hits = pd.concat([r.hits for r in results], ignore_index=True)
    tables = {"example_hits": hits, "hit_summary": summarise_hits(hits, cfg.evaluation.ks)}
    if cfg.attribution.enabled:
        tables["top_units"] = pd.concat([r.top_units for r in results], ignore_index=True)
        tables["head_scores"] = pd.concat([head_scores(r.aggregate) for r in results], ignore_index=True)
        tables["layer_profiles"] = layer_profiles([r.aggregate for r in results])
    if cfg.ablation.name != "none":
        tables["ablation"] = pd.concat([r.ablation for r in results], ignore_index=True)
    return tables


def dynamics_tables(
    cfg: RunConfig, results: list[CheckpointResult], tracker: Tracker
) -> dict[str, pd.DataFrame]:
    """Stability, concentration and consolidation over the checkpoints; curves and summaries to MLflow."""
    curves, summary = compute_dynamics([r.aggregate for r in results], cfg.dynamics)
    per_step, totals = dynamics_metrics(curves, summary)
    for step, values in sorted(per_step.items()):
        tracker.log_metrics(values, step=step)
    tracker.log_metrics(totals)
    return {"dynamics_curves": curves, "dynamics_summary": summary}


def log_figures(cfg: RunConfig, tables: dict[str, pd.DataFrame], tracker: Tracker) -> None:
    """The paper's figures for this run (those whose tables exist)."""
    name = cfg.model.name
    figures = {"figures/hit_curves.png": plot_hit_curves({name: tables["hit_summary"]})}
    if "dynamics_curves" in tables:
        curves = {name: tables["dynamics_curves"]}
        figures["figures/fig1_jaccard.png"] = plot_jaccard(curves)
        figures["figures/r_t_concentration.png"] = plot_concentration(curves)
    if "layer_profiles" in tables:
        profiles = {name: tables["layer_profiles"]}
        figures["figures/fig2_layer_importance.png"] = plot_layer_importance_over_steps(profiles)
        figures["figures/fig3_ffn_layers.png"] = plot_layer_distributions(profiles, units=("ffn",))
        figures["figures/fig4_attn_layers.png"] = plot_layer_distributions(profiles, units=("attn",))
    if "ablation" in tables:
        figures["figures/fig5_ablation.png"] = plot_ablation({name: tables["ablation"]})
    for path, fig in figures.items():
        tracker.log_figure(fig, path)


def _bar(cfg: RunConfig, total: int, desc: str):
    return tqdm(total=total, desc=f"  {desc}", unit="ex", leave=False, disable=not cfg.progress)


def run_name(cfg: RunConfig) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    rel = "+".join(cfg.relations.names) if cfg.relations.names else "+".join(cfg.relations.categories)
    if (
        set(cfg.relations.categories) == {"linguistic", "commonsense", "factual", "bias"}
        and not cfg.relations.names
    ):
        rel = "all"
    return f"{cfg.model.name}-{rel}-{cfg.ablation.name}"


def run_tags(cfg: RunConfig, hydra_tags: dict[str, str] | None) -> dict[str, str]:
    tags = {
        "gated_lpi.model": cfg.model.name,
        "gated_lpi.family": cfg.model.family,
        "gated_lpi.ablation": cfg.ablation.name,
        "gated_lpi.version": __version__,
    }
    tags.update(hydra_tags or {})
    return tags


def log_run_params(tracker: Tracker, cfg: RunConfig, series: Resolution, samples: pd.DataFrame) -> None:
    """Params (flattened config, revisions, dataset hash, versions) and the resolved-config artifacts."""
    params = flatten(asdict(cfg))
    params.update(
        {
            "run.revisions": ",".join(c.label for c in series.checkpoints),
            "run.n_checkpoints": len(series.checkpoints),
            "run.missing_steps": ",".join(map(str, series.missing_steps)) or "none",
            "data.hash": dataset_hash(samples),
            "data.n_examples": len(samples),
            "package.version": __version__,
            "package.git_commit": git_commit(),
        }
    )
    tracker.log_params(params)
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), "config/resolved.yaml")
    table = pd.DataFrame(
        [dict(step=c.step, tokens=c.tokens, source=c.source, revision=c.revision) for c in series.checkpoints]
    )
    tracker.log_table(CheckpointTable.check(table), "checkpoints")
    tracker.log_table(samples, "samples")


def git_commit() -> str:
    """The commit of the source tree this package runs from, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
