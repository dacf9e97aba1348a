"""Every figure the project draws, declared once: its file name, caption, the table it reads and how to draw
it. A run logs each as ``figures/<stem>.png``; the report shows the same figures over several runs.

A new figure is one entry of :data:`FIGURES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

from gated_lpi_exp.plots.dynamics import (
    plot_concentration,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
)
from gated_lpi_exp.plots.evaluation import plot_ablation, plot_hit_curves


@dataclass(frozen=True)
class FigureSettings:
    """The run settings a figure's titles and labels state."""

    top_frac: float = 0.01
    """``dynamics.top_frac``: the share of neurons in a top set."""
    ablation_labels: Mapping[str, str] = field(default_factory=dict)
    """Ablation name -> display name (the preset's ``label``), in panel order."""


Tables = Mapping[str, pd.DataFrame]
"""Model name -> one run table."""
Draw = Callable[[Tables, Mapping[str, str], FigureSettings, Mapping[str, Tables]], Figure]
"""``(table by model, colour by model, settings, further tables by name) -> figure``."""


@dataclass(frozen=True)
class FigureSpec:
    """One figure: file stem, caption, the run table it draws and how."""

    stem: str
    """File name without ``.png``, in a run's ``figures/`` and in the report's folder."""
    caption: str
    table: str
    """The run table (``tables/<table>.parquet``) it is drawn from."""
    draw: Draw
    extras: tuple[str, ...] = ()
    """Further run tables it also draws when a run has them (e.g. Fig. 1's lagged pairs)."""

    def render(
        self,
        tables_by_model: Tables,
        colors: Mapping[str, str],
        settings: FigureSettings | None = None,
        extras: Mapping[str, Tables] | None = None,
    ) -> Figure:
        """The figure for these models' tables.

        Args:
            tables_by_model: Model name -> the run's :attr:`table`.
            colors: Model name -> colour.
            settings: What titles and labels state; None = the defaults.
            extras: Table name (one of :attr:`extras`) -> {model name: table}; a missing name is not drawn.
        """
        return self.draw(tables_by_model, colors, settings or FigureSettings(), extras or {})


_DIST = "layer importance across depth at each model's first, middle and last step."
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "fig1_jaccard",
        "Fig. 1: Jaccard overlap of the top FFN and ATTN neuron sets between consecutive checkpoints; dashed: "
        "the overlap of the configured lagged pairs (dynamics.lagged_pairs, e.g. 100K vs 300K).",
        "dynamics_curves",
        lambda data, colors, s, more: plot_jaccard(
            data, top_frac=s.top_frac, colors=colors, lagged=more.get("dynamics_lagged")
        ),
        extras=("dynamics_lagged",),
    ),
    FigureSpec(
        "fig1b_concentration",
        "Positive-gain concentration R_t over training (Table 2's R_t, per step).",
        "dynamics_curves",
        lambda data, colors, s, _: plot_concentration(data, top_frac=s.top_frac, colors=colors),
    ),
    FigureSpec(
        "fig2_layer_importance",
        "Fig. 2: mean FFN and ATTN layer importance over training steps.",
        "layer_profiles",
        lambda data, colors, s, _: plot_layer_importance_over_steps(data, colors=colors),
    ),
    FigureSpec(
        "fig3_ffn_distribution",
        f"Fig. 3: FFN {_DIST}",
        "layer_profiles",
        lambda data, colors, s, _: plot_layer_distributions(data, units=("ffn",), colors=colors),
    ),
    FigureSpec(
        "fig4_attn_distribution",
        f"Fig. 4: ATTN {_DIST}",
        "layer_profiles",
        lambda data, colors, s, _: plot_layer_distributions(data, units=("attn",), colors=colors),
    ),
    FigureSpec(
        "fig5_ablation",
        "Fig. 5: HIT@10 under each ablation of these runs: targeted (top units) vs a matched random control.",
        "ablation",
        lambda data, colors, s, _: plot_ablation(data, colors=colors, labels=s.ablation_labels),
    ),
    FigureSpec(
        "hit_curves",
        "HIT@1 and HIT@10 over training: all relations (thick) and per category (thin).",
        "hit_summary",
        lambda data, colors, s, _: plot_hit_curves(data, colors=colors),
    ),
)
"""In report order."""
