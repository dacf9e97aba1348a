"""Shared look of every figure: model colours, the training-step axis, empty panels, PNG export.

Figures are built with ``matplotlib.figure.Figure`` directly (never pyplot), so no GUI backend is touched, no
global figure list grows, and saving renders with Agg.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
"""Model colours, assigned in the order models are given (the report passes them in one fixed order)."""
UNIT_LABELS = {"ffn": "FFN", "attn": "ATTN"}
STEP_LABEL = "training step"
IMPORTANCE_UNITS = "Gated-LPI, Δ log-prob (nats)"
_LOG_SPAN = 100.0  # steps spanning at least two decades get a log axis


def model_colors(names: Iterable[str]) -> dict[str, str]:
    """Colour of each model, by position in ``names`` (stable for a given order of models)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def resolve_colors(models: Iterable[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """Colour of each of ``models`` (in order): from ``colors`` where given, else :func:`model_colors`."""
    models = list(models)
    default = model_colors(models)
    return {m: (colors or {}).get(m, default[m]) for m in models}


def new_figure(
    n_rows: int, n_cols: int, *, width: float = 6.0, height: float = 4.0, **kwargs
) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_rows x n_cols`` panels, each ``width x height`` inches; axes as a 2-D array."""
    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    FigureCanvasAgg(fig)  # text sizes can be measured while the figure is built (legend columns)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)  # [rows, cols]
    return fig, axes


def format_step(value: float, _pos: int | None = None) -> str:
    """Tick label of a training step: 500, 10K, 1.2M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}K"
    return f"{value:g}"


def step_axis(ax: Axes, steps: Sequence[int] | np.ndarray) -> None:
    """Label the x axis as training steps; log scale (symlog when step 0 is present) over >= 2 decades."""
    s = np.asarray(steps, dtype=float)
    positive = s[s > 0]
    if positive.size and s.max() / positive.min() >= _LOG_SPAN:
        if (s <= 0).any():
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        else:
            ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(format_step))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(STEP_LABEL)
    ax.grid(True, alpha=0.3)


def mark_empty(ax: Axes, what: str = "no data") -> None:
    """Say in the panel that there is nothing to draw."""
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def proxy(label: str, **style) -> Line2D:
    """A legend-only line (e.g. a condition's line style in black)."""
    return Line2D([], [], label=label, **style)


def figure_legend(
    fig: Figure, handles: Sequence[Line2D], title: str | None = None, below: bool = False
) -> None:
    """One legend for the whole figure, outside the panels: right, or ``below`` in as many columns (up to 5)
    as fit the figure's width."""
    if not handles:
        return
    if not below:
        fig.legend(handles=handles, loc="outside right upper", title=title, fontsize=9)
        return
    renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()
    for ncols in range(min(len(handles), 5), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9, title=title)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


_CHAR_WIDTH_IN = {10: 0.085, 12: 0.1}
"""Width of an average character of the default font at 10 and 12 pt, in inches (for wrapping titles)."""


def figure_title(fig: Figure, text: str) -> None:
    """The figure's title, wrapped onto as many lines as the figure's width needs."""
    chars = max(20, int(0.95 * fig.get_figwidth() / _CHAR_WIDTH_IN[12]))
    fig.suptitle("\n".join(textwrap.wrap(text, chars)))


def panel_title(ax: Axes, text: str, **kwargs) -> None:
    """A panel's title, wrapped to the panel's width."""
    fig = ax.get_figure(root=True)
    width = ax.get_position().width * (fig.get_figwidth() if fig is not None else 6.0)
    chars = max(16, int(0.95 * width / _CHAR_WIDTH_IN[12]))
    ax.set_title("\n".join(textwrap.wrap(text, chars)), **kwargs)


def layer_axis(ax: Axes) -> None:
    """Label the x axis as layers, with a tick only at whole layer numbers."""
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def model_handles(colors: dict[str, str]) -> list[Line2D]:
    """Legend entries of the models: their colour, a solid line with markers."""
    return [proxy(model, color=color, lw=1.8, marker="o", ms=3) for model, color in colors.items()]


def percent_label(top_frac: float) -> str:
    """``0.01`` -> ``1%``."""
    return f"{top_frac * 100:g}%"


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
