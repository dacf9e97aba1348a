"""Dynamics figures (paper Figs. 1-4): neuron-set curves and layer-importance profiles over training steps.

Every function takes ``{model name: table}`` and overlays the models, so one function serves a single run
and the cross-run report. Colours follow the order of the dict (see :func:`model_colors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from gated_lpi_exp.plots._style import (
    IMPORTANCE_UNITS,
    UNIT_LABELS,
    figure_legend,
    figure_title,
    format_step,
    layer_axis,
    mark_empty,
    model_handles,
    new_figure,
    panel_title,
    percent_label,
    resolve_colors,
    step_axis,
)
from gated_lpi_exp.schemas import DataFrame, DynamicsCurve, LaggedOverlap, LayerProfile

UNITS = ("ffn", "attn")


def plot_curves(
    curves_by_model: Mapping[str, DataFrame[DynamicsCurve]],
    metric: str,
    *,
    title: str,
    ylabel: str,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """One per-step dynamics metric (values in %), FFN and ATTN neuron panels, a line per model.

    Args:
        curves_by_model: Model name -> dynamics curves table.
        metric: ``j_stab`` or ``r_t``.
        title: Figure title.
        ylabel: y-axis label (values are plotted x100).
        colors: Model name -> colour; None = :func:`model_colors` in the dict's order.
    """
    fig, axes = new_figure(1, 2, sharey=True)
    colors = resolve_colors(curves_by_model, colors)
    for ax, unit in zip(axes[0], UNITS, strict=True):
        steps: list[int] = []
        for model, table in curves_by_model.items():
            part = table[(table["metric"] == metric) & (table["unit"] == unit)].sort_values("step")
            if part.empty:
                continue
            ax.plot(
                part["step"], 100 * part["value"], marker="o", ms=3, lw=1.6, color=colors[model], label=model
            )
            steps += part["step"].tolist()
        ax.set_title(f"{UNIT_LABELS[unit]} neurons")
        if steps:
            step_axis(ax, steps)
        else:
            mark_empty(ax)
    axes[0, 0].set_ylabel(ylabel)
    figure_legend(fig, model_handles(colors), title="model")
    figure_title(fig, title)
    return fig


def plot_jaccard(
    curves_by_model: Mapping[str, DataFrame[DynamicsCurve]],
    top_frac: float = 0.01,
    colors: Mapping[str, str] | None = None,
    lagged: Mapping[str, DataFrame[LaggedOverlap]] | None = None,
) -> Figure:
    """Fig. 1: Jaccard overlap of the top neuron sets of consecutive checkpoints (J_t, eq. 7), FFN and ATTN.

    Args:
        curves_by_model: Model name -> dynamics curves table (rows ``metric == "j_stab"`` are drawn).
        top_frac: Share of neurons in a top set, for the labels.
        colors: Model name -> colour; None = one per model in the dict's order.
        lagged: Model name -> lagged-overlap table: each pair is drawn beside the curve as a dashed span from
            its first to its second step at its overlap, labelled, with its random baseline when known.
    """
    pct = percent_label(top_frac)
    fig = plot_curves(
        curves_by_model,
        "j_stab",
        title=f"Top-{pct} neuron set stability: Jaccard overlap between consecutive checkpoints",
        ylabel=f"Jaccard overlap of top-{pct} sets, $J_t$ (%)",
        colors=colors,
    )
    colors = resolve_colors(curves_by_model, colors)
    for model, table in (lagged or {}).items():
        for ax, unit in zip(fig.axes[:2], UNITS, strict=True):
            # Only J_lag: another lagged_pair metric need not be a Jaccard overlap on this axis.
            rows = table[(table["unit"] == unit) & (table["metric"] == "j_lag")]
            for row in rows.itertuples(index=False):
                _draw_lagged(ax, row, colors.get(model, "black"))
    return fig


def _draw_lagged(ax, row, color: str) -> None:
    """One lagged pair: a dashed span ``step_a -> step_b`` at its overlap (%), labelled above its middle."""
    value = 100 * row.value
    ax.plot([row.step_a, row.step_b], [value, value], ls="--", lw=1.2, color=color, marker="|", ms=8)
    label = f"J({format_step(row.step_a)}, {format_step(row.step_b)}) = {value:.1f}%"
    if not np.isnan(row.random_baseline):
        label += f" (random {100 * row.random_baseline:.2f}%)"
    middle = (row.step_a + row.step_b) / 2
    ax.annotate(
        label,
        (middle, value),
        textcoords="offset points",
        xytext=(0, 4),
        ha="center",
        fontsize=7,
        color=color,
    )


def plot_concentration(
    curves_by_model: Mapping[str, DataFrame[DynamicsCurve]],
    top_frac: float = 0.01,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Positive-gain concentration R_t (eq. 8) over steps, FFN and ATTN (per layer, averaged over layers).

    Args:
        curves_by_model: Model name -> dynamics curves table (rows ``metric == "r_t"`` are drawn).
        top_frac: Share of neurons counted as the top gainers, for the labels.
        colors: Model name -> colour; None = one per model in the dict's order.
    """
    pct = percent_label(top_frac)
    return plot_curves(
        curves_by_model,
        "r_t",
        title=f"Positive-gain concentration: share of each layer's importance gain taken by its top-{pct}",
        ylabel=f"$R_t$: gain share of top-{pct} (%)",
        colors=colors,
    )


def _overall(profiles: pd.DataFrame, unit: str, relation: str) -> pd.DataFrame:
    return profiles[(profiles["unit"] == unit) & (profiles["relation"] == relation)]


def plot_layer_importance_over_steps(
    profiles_by_model: Mapping[str, DataFrame[LayerProfile]],
    relation: str = "all",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Fig. 2: mean layer importance (mean over layers) over training steps, FFN and ATTN panels.

    Args:
        profiles_by_model: Model name -> layer profiles table.
        relation: Which examples' profile: ``all`` or one relation name.
        colors: Model name -> colour; None = one per model in the dict's order.
    """
    fig, axes = new_figure(1, 2)
    colors = resolve_colors(profiles_by_model, colors)
    for ax, unit in zip(axes[0], UNITS, strict=True):
        steps: list[int] = []
        for model, table in profiles_by_model.items():
            mean = _overall(table, unit, relation).groupby("step")["importance"].mean()  # [S]
            if mean.empty:
                continue
            ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, lw=1.6, color=colors[model], label=model)
            steps += mean.index.tolist()
        ax.set_title(f"{UNIT_LABELS[unit]} layers")
        if steps:
            step_axis(ax, steps)
            ax.set_ylabel(f"mean layer importance\n({IMPORTANCE_UNITS})")
        else:
            mark_empty(ax)
    figure_legend(fig, model_handles(colors), title="model")
    scope = "all examples" if relation == "all" else f"relation {relation}"
    figure_title(fig, f"Mean FFN and ATTN layer importance over training ({scope})")
    return fig


def pick_steps(available: Sequence[int], wanted: Sequence[int] | None) -> list[int]:
    """Steps to show: default first, middle and last; else the nearest available step to each wanted one."""
    have = np.unique(np.asarray(available, dtype=np.int64))  # [S] sorted
    if have.size == 0:
        return []
    if wanted is None:
        return sorted({int(have[0]), int(have[have.size // 2]), int(have[-1])})
    return sorted({int(have[np.abs(have - w).argmin()]) for w in wanted})


def _distribution_panel(ax, table: pd.DataFrame, steps: Sequence[int] | None) -> bool:
    chosen = pick_steps(table["step"].tolist(), steps)
    shades = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(chosen), 1)))
    for shade, step in zip(shades, chosen, strict=False):
        part = table[table["step"] == step].sort_values("layer")
        ax.plot(
            part["layer"], part["importance"], marker="o", ms=3.5, lw=1.6, color=shade, label=f"step {step:,}"
        )
    return bool(chosen)


def plot_layer_distributions(
    profiles_by_model: Mapping[str, DataFrame[LayerProfile]],
    steps: Sequence[int] | None = None,
    units: Sequence[str] = UNITS,
    relation: str = "all",
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Figs. 3-4: layer importance across depth at a few training steps; a row per unit, a column per model.

    Args:
        profiles_by_model: Model name -> layer profiles table.
        steps: Steps to show (each model shows its nearest available ones); None = first, middle and last.
        units: Rows: ``("ffn",)`` gives Fig. 3, ``("attn",)`` Fig. 4, both by default.
        relation: ``all`` or one relation name.
        colors: Model name -> colour of its panel titles; None = one per model in the dict's order.
    """
    models = list(profiles_by_model) or ["(no model)"]
    fig, axes = new_figure(len(units), len(models), width=5.0, height=3.6)
    colors = resolve_colors(models, colors)
    for row, unit in enumerate(units):
        for col, model in enumerate(models):
            ax = axes[row, col]
            table = _overall(
                profiles_by_model.get(model, pd.DataFrame(columns=["unit", "relation"])), unit, relation
            )
            panel_title(ax, f"{model}: {UNIT_LABELS[unit]} layers", color=colors[model])
            if not _distribution_panel(ax, table, steps):
                mark_empty(ax)
                continue
            layer_axis(ax)
            ax.set_ylabel(f"layer importance\n({IMPORTANCE_UNITS})")
            ax.grid(True, alpha=0.3)
            # Below the panel: the profile spans every layer, so any inside corner would hide points.
            ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    names = " and ".join(UNIT_LABELS[u] for u in units)
    figure_title(fig, f"{names} layer importance distribution at selected training steps")
    return fig
