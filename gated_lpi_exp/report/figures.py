"""The report's figures: every figure of :data:`gated_lpi_exp.plots.FIGURES`, columns overlaid, one colour per
column."""

from __future__ import annotations

from dataclasses import dataclass

from gated_lpi_exp.plots import FIGURES, FigureSettings, FigureSpec, model_colors, to_png
from gated_lpi_exp.report.runs import Column
from gated_lpi_exp.report.tables import ablation_labels


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
    settings = FigureSettings(top_frac=float(top) if top else 0.01, ablation_labels=ablation_labels(columns))
    out = []
    for spec in FIGURES:
        data = {c.label: t for c in columns if (t := c.table(spec.table)) is not None}
        lacking = [c.label for c in columns if c.label not in data]
        if not data:
            out.append(
                RenderedFigure(spec, None, f"Not computed in these runs (no tables/{spec.table}.parquet).")
            )
            continue
        more = {
            name: {c.label: t for c in columns if (t := c.table(name)) is not None} for name in spec.extras
        }
        fig = spec.render(data, colors, settings, more)
        note = f"Not computed in this run: {', '.join(lacking)}." if lacking else ""
        out.append(RenderedFigure(spec, to_png(fig), note))
    return out
