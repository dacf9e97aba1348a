"""The report's figures: every plot of :mod:`gated_lpi_exp.plots`, columns overlaid, one colour per column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gated_lpi_exp.plots import (
    model_colors,
    plot_ablation,
    plot_concentration,
    plot_hit_curves,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
    to_png,
)
from gated_lpi_exp.report.runs import Column
from gated_lpi_exp.report.tables import ablation_labels


@dataclass(frozen=True)
class FigureSpec:
    """One report figure: file stem, caption, the run table it draws and the plot function."""

    stem: str
    caption: str
    table: str
    plot: Callable


_DIST = "layer importance across depth at each model's first, middle and last step."
FIGURES = (
    FigureSpec(
        "fig1_jaccard",
        "Fig. 1: Jaccard overlap of the top FFN and ATTN neuron sets between consecutive checkpoints.",
        "dynamics_curves",
        plot_jaccard,
    ),
    FigureSpec(
        "fig1b_concentration",
        "Positive-gain concentration R_t over training (Table 2's R_t, per step).",
        "dynamics_curves",
        plot_concentration,
    ),
    FigureSpec(
        "fig2_layer_importance",
        "Fig. 2: mean FFN and ATTN layer importance over training steps.",
        "layer_profiles",
        plot_layer_importance_over_steps,
    ),
    FigureSpec(
        "fig3_ffn_distribution",
        f"Fig. 3: FFN {_DIST}",
        "layer_profiles",
        partial(plot_layer_distributions, units=("ffn",)),
    ),
    FigureSpec(
        "fig4_attn_distribution",
        f"Fig. 4: ATTN {_DIST}",
        "layer_profiles",
        partial(plot_layer_distributions, units=("attn",)),
    ),
    FigureSpec(
        "fig5_ablation",
        "Fig. 5: HIT@10 under ablation (top-1 head, top-10 heads, top-1% FFN neurons): targeted vs random.",
        "ablation",
        plot_ablation,
    ),
    FigureSpec(
        "hit_curves",
        "HIT@1 and HIT@10 over training: all relations (thick) and per category (thin).",
        "hit_summary",
        plot_hit_curves,
    ),
)
"""In report order."""


@dataclass
class RenderedFigure:
    """A figure as PNG bytes (None when no column has its table) and what is missing from it."""

    spec: FigureSpec
    png: bytes | None
    note: str


def render_figures(columns: list[Column]) -> list[RenderedFigure]:
    """Draw every figure of :data:`FIGURES` over the columns that have its table."""
    colors = model_colors(c.label for c in columns)
    top = columns[0].param("dynamics.top_frac") if columns else None
    out = []
    for spec in FIGURES:
        data = {c.label: t for c in columns if (t := c.table(spec.table)) is not None}
        lacking = [c.label for c in columns if c.label not in data]
        if not data:
            out.append(
                RenderedFigure(spec, None, f"Not computed in these runs (no tables/{spec.table}.parquet).")
            )
            continue
        kwargs: dict[str, Any] = {"top_frac": float(top)} if top and spec.table == "dynamics_curves" else {}
        if spec.table == "ablation":
            kwargs["labels"] = ablation_labels(columns)
        fig = spec.plot(data, colors=colors, **kwargs)
        note = f"Not computed in this run: {', '.join(lacking)}." if lacking else ""
        out.append(RenderedFigure(spec, to_png(fig), note))
    return out
