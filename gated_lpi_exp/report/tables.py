"""The report's Tables 2-4: our columns side by side, the paper's published numbers apart, ▲ on the best.

The rows come from the metric registry: Table 2 shows every single-value metric with input ``pair`` (the
neuron-level curves' summaries), Table 3 every metric with input ``profile``; labels, units and digits are
the registry's. Which value is best comes only from ``higher_is_better``, never from the row; a metric
without a direction (None: a descriptive measure) is never marked.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gated_lpi_exp.compose import ablation_presets
from gated_lpi_exp.metrics import MetricSpec, get_metric, metrics_for
from gated_lpi_exp.report.paper import PAPER_VALUES, TABLE_NOTES, paper_cells
from gated_lpi_exp.report.runs import NOT_COMPUTED, Column

UNIT_NAMES = {"ffn": "FFN", "attn": "ATTN"}
BEST_MARK = "▲"


@dataclass
class Cell:
    """One of our values: None when there is none (``note`` says why), NaN when undefined."""

    value: float | None = None
    sd: float | None = None
    note: str = ""
    best: bool = False


@dataclass
class Row:
    """One table row: a registered metric measured in each column, and the paper's cells."""

    label: str
    metric: str
    cells: list[Cell]
    paper: list[str]
    digits: int = 2
    scale: float = 1.0

    @property
    def direction(self) -> str:
        """``higher`` / ``lower`` is better, or ``—`` for a descriptive metric."""
        better = get_metric(self.metric).higher_is_better
        return "—" if better is None else ("higher" if better else "lower")

    def text(self, cell: Cell) -> str:
        """A cell as text: ``25.3 ± 1.2 ▲``, ``n/a (1 checkpoint)`` or the note."""
        if cell.value is None:
            return cell.note or "—"
        if math.isnan(cell.value):
            return f"n/a ({cell.note})" if cell.note else "n/a"
        out = f"{cell.value * self.scale:.{self.digits}f}"
        if cell.sd is not None:
            out += f" ± {cell.sd * self.scale:.{self.digits}f}"
        return f"{out} {BEST_MARK}" if cell.best else out


@dataclass
class ReportTable:
    """A titled table with its notes."""

    key: str
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def mark_best(row: Row) -> Row:
    """Set ``best`` on the column(s) with the best finite value, by the registry's direction (>= 2 values;
    none for a metric without a direction)."""
    finite = [c.value for c in row.cells if c.value is not None and not math.isnan(c.value)]
    better = get_metric(row.metric).higher_is_better
    if len(finite) >= 2 and better is not None:
        target = max(finite) if better else min(finite)
        for cell in row.cells:
            cell.best = cell.value is not None and math.isclose(
                cell.value, target, rel_tol=1e-12, abs_tol=1e-15
            )
    return row


def _missing(column: Column, table: str) -> Cell:
    reasons = {r.missing.get(table, NOT_COMPUTED) for r in column.runs}
    return Cell(note=sorted(reasons)[0])


def _windows(columns: list[Column]) -> list[str]:
    names = ["all"]
    for col in columns:
        table = col.table("dynamics_summary")
        if table is not None:
            names += [w for w in pd.unique(table["window"]) if w not in names]
    return names


def _window_label(name: str, columns: list[Column]) -> str:
    if name == "all":
        return "all checkpoints"
    raw = {p for col in columns if (p := col.param(f"dynamics.windows.{name}")) is not None}
    if len(raw) != 1:
        return f"window {name}" + (" (bounds differ by run)" if raw else "")
    try:
        start, stop = ast.literal_eval(raw.pop())
        bounds = f"[{'first' if start is None else f'{start:,}'}, {'end' if stop is None else f'{stop:,}'})"
    except (ValueError, SyntaxError, TypeError):
        return f"window {name}"
    return f"window {name}, steps {bounds}"


def _summary_cell(column: Column, metric: str, unit: str, window: str) -> Cell:
    table = column.table("dynamics_summary")
    if table is None:
        return _missing(column, "dynamics_summary")
    hit = table[(table["metric"] == metric) & (table["unit"] == unit) & (table["window"] == window)]
    if hit.empty:
        return Cell(note="window not in this run")
    value, n = float(hit["value"].iloc[0]), int(hit["n_checkpoints"].iloc[0])
    note = f"{n} checkpoint{'s' if n != 1 else ''}" if n < 2 else "undefined"
    return Cell(value=value, note=note if math.isnan(value) else "")


def _summary_rows(columns: list[Column], spec: MetricSpec, unit: str, window: str) -> Row:
    shown = spec.display
    label = f"{spec.label} {UNIT_NAMES[unit]}{shown.suffix}, {_window_label(window, columns)}"
    cells = [_summary_cell(c, spec.name, unit, window) for c in columns]
    paper = paper_cells((spec.name, unit, window), shown.digits)
    return mark_best(Row(label, spec.name, cells, paper, shown.digits, shown.scale))


def table2(columns: list[Column]) -> ReportTable:
    """Table 2: the neuron-level metrics (input ``pair``) by unit and window, J_stab and R_t in %."""
    top = columns[0].param("dynamics.top_frac") if columns else None
    share = (
        f"top {float(top) * 100:g}% of neurons (dynamics.top_frac={top})"
        if top
        else "see the runs' dynamics.top_frac"
    )
    rows = [
        _summary_rows(columns, spec, unit, window)
        for spec in metrics_for("pair", per_layer=False)
        for unit in UNIT_NAMES
        for window in _windows(columns)
    ]
    notes = [
        "J_stab: mean over the consecutive checkpoint pairs inside the window of the Jaccard overlap of "
        "top-|I| neuron sets (eq. 7). R_t: mean over steps, skipping undefined steps, of the positive-gain "
        f"concentration (eq. 8), per layer then averaged over layers. Top sets: {share}.",
        TABLE_NOTES["table2"],
    ]
    return ReportTable("table2", "Table 2: neuron-level stability", [c.label for c in columns], rows, notes)


def table3(columns: list[Column]) -> ReportTable:
    """Table 3: the layer-level metrics (input ``profile``: ρ_avg, σ_rel) of the layer profiles by window."""
    rows = [
        _summary_rows(columns, spec, unit, window)
        for unit in UNIT_NAMES
        for window in _windows(columns)
        for spec in metrics_for("profile")
    ]
    notes = [
        "ρ_avg: mean Pearson correlation of the mean layer-importance profiles over checkpoint pairs "
        "(eqs. 9–10); σ_rel: mean over layers of std/|mean| across checkpoints (eq. 11).",
        TABLE_NOTES["table3"],
    ]
    return ReportTable("table3", "Table 3: layer-level stability", [c.label for c in columns], rows, notes)


MIN_BASE_HIT10 = 0.5
"""Table 4 averages drops over the checkpoints whose unablated HIT@10 is at least this."""


def _drop_cells(column: Column, ablation: str) -> tuple[Cell, Cell]:
    """Targeted drop (checkpoint mean) and the random control (checkpoint mean per seed, mean ± sd)."""
    table = column.table("ablation")
    if table is None:
        return _missing(column, "ablation"), _missing(column, "ablation")
    part = table[table["ablation"] == ablation]
    base = part[part["condition"] == "base"].groupby("step")["hit_at_10"].mean()  # [S]
    # Near chance a drop % divides by almost nothing (0.01 -> 0.03 is -200%); the paper's checkpoints all
    # know the facts, so average over checkpoints where the model does.
    part = part[part["step"].isin(base.index[base >= MIN_BASE_HIT10])]
    targeted = part[part["condition"] == "targeted"].groupby("step")["drop_percent"].mean()  # [S]
    per_seed = part[part["condition"] == "random"].groupby("seed")["drop_percent"].mean()  # [seeds]
    none = Cell(note=NOT_COMPUTED)
    t_cell = Cell(value=float(np.nanmean(targeted))) if targeted.notna().any() else none
    seeds = per_seed.dropna()
    if seeds.empty:
        return t_cell, Cell(note=NOT_COMPUTED)
    sd = float(seeds.std(ddof=1)) if len(seeds) > 1 else None
    return t_cell, Cell(value=float(seeds.mean()), sd=sd)


def ablation_labels(columns: list[Column]) -> dict[str, str]:
    """Ablation name -> display name, for the ablations a report shows: every preset the paper reports and
    every ablation a run computed; presets first in their order (:func:`ablation_presets`), others by name.

    The display name is the one the runs logged (param ``ablation.label``), else the preset's, else the name.
    """
    present = set()
    for col in columns:
        table = col.table("ablation")
        present |= set() if table is None else set(table["ablation"])
    presets = ablation_presets()
    reported = [n for n in presets if n in present or ("drop_percent", n, "targeted") in PAPER_VALUES]
    names = reported + sorted(present - set(presets))
    logged = {
        r.ablation: r.params["ablation.label"]
        for c in columns
        for r in reversed(c.runs)  # newest last, so the newest run's label wins
        if r.params.get("ablation.label")
    }
    return {n: logged.get(n) or (presets[n].display_name if n in presets else n) for n in names}


def table4(columns: list[Column]) -> ReportTable:
    """Table 4: HIT@10 drop (%) per ablation, targeted vs the matched random control."""
    rows = []
    for name, label in ablation_labels(columns).items():
        pairs = [_drop_cells(c, name) for c in columns]
        paper = paper_cells(("drop_percent", name, "targeted"), 2)
        rows.append(mark_best(Row(f"{label}: targeted", "drop_percent", [p[0] for p in pairs], paper)))
        control = ["—"] * len(paper)
        rows.append(
            mark_best(Row(f"{label}: random control", "drop_percent", [p[1] for p in pairs], control))
        )
    heldout = any(bool(t["heldout"].any()) for c in columns if (t := c.table("ablation")) is not None)
    notes = [
        "Drop % = 100·(HIT@10 base − ablated)/base per checkpoint, then the unweighted mean over the checkpoints "
        f"whose base HIT@10 is at least {MIN_BASE_HIT10} (near chance the ratio is meaningless). "
        "Random control: that mean for each seed, then mean ± sample sd over seeds (no sd with one seed).",
        "Units ranked on a held-out half of the examples (some runs)."
        if heldout
        else "Units ranked and evaluated on the same examples (no held-out split).",
        TABLE_NOTES["table4"],
    ]
    return ReportTable(
        "table4", "Table 4: HIT@10 drop (%) under ablation", [c.label for c in columns], rows, notes
    )


def build_tables(columns: list[Column]) -> list[ReportTable]:
    """Tables 2, 3 and 4 for these columns."""
    return [table2(columns), table3(columns), table4(columns)]
