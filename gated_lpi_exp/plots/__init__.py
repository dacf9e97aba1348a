"""The project's figures (matplotlib, no pyplot): each function returns a ``Figure`` and overlays models.

| paper | function | input table |
|---|---|---|
| Fig. 1 | :func:`plot_jaccard` | ``DynamicsCurve`` |
| (R_t, Table 2) | :func:`plot_concentration` | ``DynamicsCurve`` |
| Fig. 2 | :func:`plot_layer_importance_over_steps` | ``LayerProfile`` |
| Figs. 3-4 | :func:`plot_layer_distributions` (``units=("ffn",)`` / ``("attn",)``) | ``LayerProfile`` |
| Fig. 5 | :func:`plot_ablation` | ``AblationResult`` |
| (HIT@k) | :func:`plot_hit_curves` | ``HitSummary`` |

Every function takes ``{model name: table}``; colours are given to models in the dict's order.
:data:`FIGURES` declares each figure once (file name, caption, table, how to draw it) for the run and the
report.
"""

from gated_lpi_exp.plots._style import model_colors, to_png
from gated_lpi_exp.plots.dynamics import (
    plot_concentration,
    plot_curves,
    plot_jaccard,
    plot_layer_distributions,
    plot_layer_importance_over_steps,
)
from gated_lpi_exp.plots.evaluation import plot_ablation, plot_hit_curves
from gated_lpi_exp.plots.figures import FIGURES, FigureSettings, FigureSpec

__all__ = [
    "FIGURES",
    "FigureSettings",
    "FigureSpec",
    "model_colors",
    "plot_ablation",
    "plot_concentration",
    "plot_curves",
    "plot_hit_curves",
    "plot_jaccard",
    "plot_layer_distributions",
    "plot_layer_importance_over_steps",
    "to_png",
]
