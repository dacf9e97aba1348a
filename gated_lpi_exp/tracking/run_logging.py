"""What a run writes to MLflow: name, tags, params, its dataset input, resolved config, each checkpoint's
metrics and arrays, figures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from gated_lpi_exp import __version__
from gated_lpi_exp.checkpoints.prefetch import FeedStats
from gated_lpi_exp.checkpoints.resolve import Resolution
from gated_lpi_exp.compat import DESCRIPTIONS as SCORING_DESCRIPTIONS
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import cleaning_report, dataset_hash
from gated_lpi_exp.metrics import metric_versions
from gated_lpi_exp.plots import FIGURES, FigureSettings, model_colors
from gated_lpi_exp.schemas import CheckpointTable
from gated_lpi_exp.stages.ablation import ablation_metrics
from gated_lpi_exp.stages.attribution import aggregate_arrays
from gated_lpi_exp.stages.evaluation import hit_metrics, summarise_hits
from gated_lpi_exp.storage.results import CheckpointResult
from gated_lpi_exp.tracking.describe import (
    dataset_name,
    dataset_source,
    relation_label,
    resolved_config,
    resolved_params,
)
from gated_lpi_exp.tracking.names import (
    ABLATION_TAG,
    COMPAT_TAG,
    DATA_HASH_PARAM,
    FAMILY_TAG,
    MODEL_TAG,
    N_CHECKPOINTS_PARAM,
    SCORING_PARAM,
    SOURCE_NAME_TAG,
    VERSION_TAG,
)
from gated_lpi_exp.tracking.tracker import Tracker

ARRAYS_README = """# attribution/step<N>.npz

The mean Gated-LPI score (nats of log-probability of the gold token) of every unit at checkpoint step N,
averaged over the run's examples; numpy arrays, read with `numpy.load(path)`:

- `ffn` [layers, FFN neurons] (MoE: expert-major, expert e's neurons at e*width ... (e+1)*width - 1)
- `attn` [layers, attention neurons], `heads` [layers, heads]
- `ffn_layer`, `attn_layer` [layers]: each layer's importance

The tables under `tables/` (`top_units`, `layer_profiles`, `head_scores`) hold the readable summaries.
"""


def run_name(cfg: RunConfig) -> str:
    """``tracking.run_name``, else ``<model>-<relations>-<ablation>``."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    return f"{cfg.model.name}-{relation_label(cfg)}-{cfg.ablation.name}"


def run_tags(cfg: RunConfig, hydra_tags: dict[str, str] | None) -> dict[str, str]:
    tags = {
        MODEL_TAG: cfg.model.name,
        FAMILY_TAG: cfg.model.family,
        ABLATION_TAG: cfg.ablation.name,
        VERSION_TAG: __version__,
        SOURCE_NAME_TAG: "gated_lpi_exp",
    }
    if cfg.attribution.compat != "none":
        tags[COMPAT_TAG] = cfg.attribution.compat
    tags.update(hydra_tags or {})
    return tags


def log_run_params(
    tracker: Tracker,
    cfg: RunConfig,
    series: Resolution,
    samples: pd.DataFrame,
    assignment: list[list[int]],
) -> None:
    """Params (the config with resolved values, revisions, dataset hash, package and metric versions, which
    process took which checkpoints), the examples as the run's dataset input, and the resolved-config
    artifacts."""
    params = resolved_params(cfg)
    params.update({f"metrics.{name}.version": version for name, version in metric_versions().items()})
    params.update(
        {
            "run.revisions": ",".join(c.label for c in series.checkpoints),
            "run.commits": ",".join(f"{c.step}:{c.commit[:12]}" for c in series.checkpoints if c.commit)
            or "none",
            N_CHECKPOINTS_PARAM: len(series.checkpoints),
            "run.missing_steps": ",".join(map(str, series.missing_steps)) or "none",
            "run.step_mapping": ", ".join(f"{a}->{b}" for a, b in series.substitutions.items() if a != b)
            or "none",
            "run.processes": len(assignment),
            "run.assignment": "; ".join(
                f"{rank}: {','.join(map(str, steps)) or '-'}" for rank, steps in enumerate(assignment)
            ),
            DATA_HASH_PARAM: dataset_hash(samples),
            **data_params(samples),
            "package.version": __version__,
            "package.git_commit": git_commit(),
            SCORING_PARAM: SCORING_DESCRIPTIONS[cfg.attribution.compat],
        }
    )
    tracker.log_params(params)
    tracker.log_dataset(samples, dataset_name(cfg), dataset_hash(samples), dataset_source(cfg))
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(resolved_config(cfg))), "config/resolved.yaml")
    if cfg.attribution.enabled:
        tracker.log_text(ARRAYS_README, "attribution/README.md")
    table = pd.DataFrame(
        [
            dict(step=c.step, tokens=c.tokens, source=c.source, revision=c.revision, commit=c.commit)
            for c in series.checkpoints
        ]
    )
    tracker.log_table(CheckpointTable.check(table), "checkpoints")
    tracker.log_table(samples, "samples")
    if "changes" in samples.attrs:
        tracker.log_table(cleaning_report(samples), "cleaning")


def data_params(samples: pd.DataFrame) -> dict[str, int]:
    """``data.n_examples`` and, from the cleaning report, ``data.n_duplicates`` / ``data.n_conflicts``: the
    samples that repeat an earlier subject with the same / another object (kept or dropped, as
    ``relations.duplicates`` says)."""
    kinds = [c["kind"] for c in samples.attrs.get("changes", [])]
    return {
        "data.n_examples": len(samples),
        "data.n_duplicates": kinds.count("duplicate"),
        "data.n_conflicts": kinds.count("conflict"),
    }


def log_walk(tracker: Tracker, stats: list[FeedStats]) -> None:
    """The walk's wall time (the slowest process's) and what the hub downloads of every process cost (hub
    series only): bytes and time, the walk's wait for them, the peak disk they held, what was evicted, and
    the steps skipped after a failed one."""
    tracker.log_metrics({"time.walk_s": max(s.walk_seconds for s in stats)})
    if not any(s.downloaded_bytes or s.failed_steps for s in stats):
        return
    tracker.log_metrics(
        {
            "download.bytes": sum(s.downloaded_bytes for s in stats),
            "download.seconds": sum(s.download_seconds for s in stats),
            "download.wait_s": sum(s.wait_seconds for s in stats),
            "download.disk_peak_bytes": max(s.disk_peak_bytes for s in stats),
            "download.evicted_bytes": sum(s.evicted_bytes for s in stats),
        }
    )
    failed = sorted(step for s in stats for step in s.failed_steps)
    tracker.log_params({"run.failed_downloads": ",".join(map(str, failed)) or "none"})


def log_figures(cfg: RunConfig, tables: dict[str, pd.DataFrame], tracker: Tracker) -> None:
    """Every figure of :data:`gated_lpi_exp.plots.FIGURES` whose table this run has, as
    ``figures/<stem>.png``."""
    name = cfg.model.name
    colors = model_colors([name])
    settings = FigureSettings(
        top_frac=cfg.dynamics.top_frac, ablation_labels={cfg.ablation.name: cfg.ablation.display_name}
    )
    for spec in FIGURES:
        if spec.table in tables:
            more = {t: {name: tables[t]} for t in spec.extras if t in tables}
            fig = spec.render({name: tables[spec.table]}, colors, settings, more)
            tracker.log_figure(fig, f"figures/{spec.stem}.png")


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


def git_commit() -> str:
    """The commit of the source tree this package runs from, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
