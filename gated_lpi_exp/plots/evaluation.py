"""Prediction figures: HIT@k learning curves and HIT@10 under ablation (paper Fig. 5), models overlaid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gated_lpi_exp.plots._style import (
    figure_legend,
    figure_title,
    mark_empty,
    new_figure,
    panel_title,
    proxy,
    resolve_colors,
    step_axis,
)
from gated_lpi_exp.schemas import AblationResult, DataFrame, HitSummary

CONDITION_STYLES = {
    "base": dict(ls="--", lw=1.3),
    "targeted": dict(ls="-", lw=2.0, marker="o", ms=3),
    "random": dict(ls=":", lw=1.6),
}
CONDITION_LABELS = {
    "base": "no ablation",
    "targeted": "targeted (top units)",
    "random": "random control (± sd)",
}
_CATEGORY_STYLES = ("--", ":", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))


def _random_band(part: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of HIT@10 over random seeds per step (sd 0 with a single seed)."""
    stats = part.groupby("step")["hit_at_10"].agg(["mean", "std", "count"])
    stats["std"] = stats["std"].where(stats["count"] > 1, 0.0)
    return stats


def _ablation_panel(ax, ablation_by_model: Mapping[str, pd.DataFrame], name: str, colors: dict) -> list[int]:
    steps: list[int] = []
    for model, table in ablation_by_model.items():
        part = table[table["ablation"] == name]
        color = colors[model]
        for condition in ("base", "targeted"):
            curve = part[part["condition"] == condition].groupby("step")["hit_at_10"].mean()  # [S]
            if not curve.empty:
                ax.plot(curve.index, 100 * curve.to_numpy(), color=color, **CONDITION_STYLES[condition])
                steps += curve.index.tolist()
        band = _random_band(part[part["condition"] == "random"])
        if not band.empty:
            low, high = 100 * (band["mean"] - band["std"]), 100 * (band["mean"] + band["std"])
            ax.plot(band.index, 100 * band["mean"], color=color, **CONDITION_STYLES["random"])
            ax.fill_between(band.index, low, high, color=color, alpha=0.15, lw=0)
    return steps


def plot_ablation(
    ablation_by_model: Mapping[str, DataFrame[AblationResult]],
    colors: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Fig. 5: HIT@10 over training steps under each ablation: base vs targeted vs random control.

    One panel per ablation present (in the order of ``labels``, then by name); a colour per model, a line
    style per condition; the random control is the mean over seeds with a ± 1 sd band.

    Args:
        ablation_by_model: Model name -> ablation results table.
        colors: Model name -> colour; None = one per model in the dict's order.
        labels: Ablation name -> display name (the preset's ``label``), in panel order; None or a missing
            name shows the name itself.
    """
    labels = labels or {}
    present = {a for t in ablation_by_model.values() for a in t["ablation"].unique()}
    names = [a for a in labels if a in present] + sorted(present - set(labels))
    fig, axes = new_figure(1, max(len(names), 1), width=5.2, sharey=True)
    colors = resolve_colors(ablation_by_model, colors)
    if not names:
        mark_empty(axes[0, 0], "no ablation results")
    for ax, name in zip(axes[0], names, strict=False):
        steps = _ablation_panel(ax, ablation_by_model, name, colors)
        panel_title(ax, f"ablate {labels.get(name, name)}")
        if steps:
            step_axis(ax, steps)
        else:
            mark_empty(ax)
    axes[0, 0].set_ylabel("HIT@10 (% of examples)")
    handles = [proxy(m, color=c, lw=2) for m, c in colors.items()]
    handles += [proxy(CONDITION_LABELS[c], color="black", **s) for c, s in CONDITION_STYLES.items()]
    figure_legend(fig, handles, below=True)
    figure_title(fig, "HIT@10 under ablation: most important units vs a matched random control")
    return fig


def plot_hit_curves(
    hits_by_model: Mapping[str, DataFrame[HitSummary]],
    ks: Sequence[int] | None = None,
    categories: bool = True,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """HIT@k learning curves over training steps: overall (thick) and per category (thin), a panel per k.

    Args:
        hits_by_model: Model name -> HIT@k summary table.
        ks: Which k to show; None = every k present (HIT@1 and HIT@10 by default config).
        categories: Also draw the per-category curves.
        colors: Model name -> colour; None = one per model in the dict's order.
    """
    present = sorted({int(k) for t in hits_by_model.values() for k in t["k"].unique()})
    ks = [k for k in (ks or present) if k in present] or [10]
    cats = sorted(
        {g for t in hits_by_model.values() for g in t.loc[t["scope"] == "category", "group"].unique()}
    )
    styles = dict(zip(cats, _CATEGORY_STYLES * (len(cats) // len(_CATEGORY_STYLES) + 1), strict=False))
    fig, axes = new_figure(1, len(ks), sharey=True)
    colors = resolve_colors(hits_by_model, colors)
    for ax, k in zip(axes[0], ks, strict=True):
        steps: list[int] = []
        for model, table in hits_by_model.items():
            part = table[table["k"] == k]
            overall = part[part["scope"] == "overall"].sort_values("step")
            ax.plot(overall["step"], 100 * overall["hit"], color=colors[model], lw=2.2, marker="o", ms=3)
            steps += overall["step"].tolist()
            for cat in cats if categories else ():
                c = part[(part["scope"] == "category") & (part["group"] == cat)].sort_values("step")
                ax.plot(c["step"], 100 * c["hit"], color=colors[model], lw=0.9, ls=styles[cat], alpha=0.8)
        ax.set_title(f"HIT@{k}")
        if steps:
            step_axis(ax, np.asarray(steps))
        else:
            mark_empty(ax)
    axes[0, 0].set_ylabel("HIT@k (% of examples)")
    handles = [proxy(f"{m} (all relations)", color=c, lw=2.2) for m, c in colors.items()]
    handles += [proxy(cat, color="0.35", lw=0.9, ls=styles[cat]) for cat in (cats if categories else ())]
    figure_legend(fig, handles, below=True)
    figure_title(fig, "Relational knowledge over training: HIT@k of the gold object token")
    return fig
