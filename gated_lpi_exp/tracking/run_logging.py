"""What a run writes to MLflow besides its metrics: name, tags, params, resolved config, figures."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from gated_lpi_exp import __version__
from gated_lpi_exp.checkpoints.resolve import Resolution
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import dataset_hash
from gated_lpi_exp.plots import (
    plot_ablation,
    plot_concentration,
    plot_hit_curves,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
)
from gated_lpi_exp.schemas import CheckpointTable
from gated_lpi_exp.tracking import Tracker, flatten


def run_name(cfg: RunConfig) -> str:
    """``tracking.run_name``, else ``<model>-<relations>-<ablation>``."""
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


def log_run_params(
    tracker: Tracker,
    cfg: RunConfig,
    series: Resolution,
    samples: pd.DataFrame,
    assignment: list[list[int]],
) -> None:
    """Params (flattened config, revisions, dataset hash, versions, which process took which checkpoints)
    and the resolved-config artifacts."""
    params = flatten(asdict(cfg))
    params.update(
        {
            "run.revisions": ",".join(c.label for c in series.checkpoints),
            "run.n_checkpoints": len(series.checkpoints),
            "run.missing_steps": ",".join(map(str, series.missing_steps)) or "none",
            "run.processes": len(assignment),
            "run.assignment": "; ".join(
                f"{rank}: {','.join(map(str, steps)) or '-'}" for rank, steps in enumerate(assignment)
            ),
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


def git_commit() -> str:
    """The commit of the source tree this package runs from, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
