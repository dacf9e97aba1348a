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
from gated_lpi_exp.metrics import MIN_BASE_HIT10, MetricSpec, get_metric, metrics_for
from gated_lpi_exp.report.choices import choices_note
from gated_lpi_exp.report.paper import PAPER_CHOICES, PAPER_VALUES, TABLE_NOTES, paper_cells
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


def _lagged_cells(column: Column, metric: str, unit: str, pair: tuple[int, int]) -> tuple[Cell, Cell, str]:
    """One configured pair's value and random baseline, and a note when the pair was matched to other
    analysed steps."""
    table = column.table("dynamics_lagged")
    if table is None:
        missing = _missing(column, "dynamics_lagged")
        return missing, missing, ""
    hit = table[
        (table["metric"] == metric)
        & (table["unit"] == unit)
        & (table["requested_a"] == pair[0])
        & (table["requested_b"] == pair[1])
    ]
    if hit.empty:
        return Cell(note="pair not in this run"), Cell(note="pair not in this run"), ""
    row = hit.iloc[0]
    steps = (int(row["step_a"]), int(row["step_b"]))
    note = "" if steps == pair else f"{column.label}: steps {steps[0]:,} vs {steps[1]:,}"
    return Cell(value=float(row["value"])), Cell(value=float(row["random_baseline"])), note


def _lagged_pairs(columns: list[Column]) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for col in columns:
        if (table := col.table("dynamics_lagged")) is not None:
            found = zip(table["requested_a"].astype(int), table["requested_b"].astype(int), strict=True)
            pairs += [p for p in found if p not in pairs]
    return pairs


def _lagged_rows(columns: list[Column]) -> tuple[list[Row], list[str]]:
    """Rows of every ``lagged_pair`` metric (J_lag), one per configured pair and unit, each followed by its
    random baseline's row; and where a pair was matched to other steps."""
    rows, matched = [], []
    for a, b in _lagged_pairs(columns):
        for spec in metrics_for("lagged_pair"):
            shown = spec.display
            for unit in UNIT_NAMES:
                label = f"{spec.label} {UNIT_NAMES[unit]}{shown.suffix}, steps {a:,} vs {b:,}"
                found = [_lagged_cells(c, spec.name, unit, (a, b)) for c in columns]
                paper = paper_cells((spec.name, unit, f"{a}_{b}"), shown.digits)
                cells, baselines = [f[0] for f in found], [f[1] for f in found]
                rows.append(mark_best(Row(label, spec.name, cells, paper, shown.digits, shown.scale)))
                random_paper = paper_cells((spec.name, unit, f"{a}_{b}.random"), shown.digits)
                rows.append(
                    Row(
                        f"{label}: random sets", spec.name, baselines, random_paper, shown.digits, shown.scale
                    )
                )
                matched += [f"{a:,} vs {b:,} -> {f[2]}" for f in found if f[2] and unit == "ffn"]
    return rows, matched


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
    lagged, matched = _lagged_rows(columns)
    rows += lagged
    notes = [
        "J_stab: mean over the consecutive checkpoint pairs inside the window of the Jaccard overlap of "
        "top-|I| neuron sets (eq. 7). R_t: mean over steps, skipping undefined steps, of the positive-gain "
        f"concentration (eq. 8), per layer then averaged over layers. J_lag: the same Jaccard overlap between "
        "two chosen checkpoints (dynamics.lagged_pairs; a step is matched to the nearest analysed checkpoint, "
        "shown when it differs); 'random sets': the expected overlap of two top sets of the same size drawn "
        f"at random (closed form). Top sets: {share}.",
        TABLE_NOTES["table2"],
        choices_note(columns),
    ]
    if matched:
        notes.insert(
            1, "Lagged pairs matched to the nearest analysed checkpoints: " + "; ".join(matched) + "."
        )
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
        choices_note(columns),
    ]
    return ReportTable("table3", "Table 3: layer-level stability", [c.label for c in columns], rows, notes)


def checkpoint_mean_drops(
    table: pd.DataFrame, ablation: str, min_base_hit10: float | None = None
) -> tuple[pd.Series, pd.Series]:
    """Targeted drop % per checkpoint and the random control's checkpoint mean per seed, for one ablation.

    Args:
        table: A run's ``ablation`` table.
        ablation: The ablation's name.
        min_base_hit10: None: every checkpoint (the paper's Table 4); else only checkpoints whose unablated
            HIT@10 is at least this (near chance a drop % divides by almost nothing; the default threshold
            is :data:`~gated_lpi_exp.metrics.MIN_BASE_HIT10`).

    Returns:
        ``(targeted [S], random [seeds])``: the targeted drop of each kept checkpoint, and the mean over the
        kept checkpoints of each random seed's drop.
    """
    part = table[table["ablation"] == ablation]
    if min_base_hit10 is not None:
        base = part[part["condition"] == "base"].groupby("step")["hit_at_10"].mean()  # [S]
        part = part[part["step"].isin(base.index[base >= min_base_hit10])]
    targeted = part[part["condition"] == "targeted"].groupby("step")["drop_percent"].mean()  # [S]
    per_seed = part[part["condition"] == "random"].groupby("seed")["drop_percent"].mean()  # [seeds]
    return targeted, per_seed


def _drop_cells(column: Column, ablation: str, min_base_hit10: float | None) -> tuple[Cell, Cell]:
    """Targeted drop (checkpoint mean) and the random control (checkpoint mean per seed, mean ± sd)."""
    table = column.table("ablation")
    if table is None:
        return _missing(column, "ablation"), _missing(column, "ablation")
    targeted, per_seed = checkpoint_mean_drops(table, ablation, min_base_hit10)
    part = table[table["ablation"] == ablation]
    n_steps = part.loc[part["condition"] == "base", "step"].nunique()
    if min_base_hit10 is not None and n_steps and targeted.empty and per_seed.empty:
        # Computed, but never at a checkpoint where a drop means something.
        low = Cell(note=f"base HIT@10 below {min_base_hit10:g} at all {n_steps} checkpoints")
        return low, low
    none = Cell(note=NOT_COMPUTED)
    t_cell = Cell(value=float(np.nanmean(targeted))) if targeted.notna().any() else none
    seeds = per_seed.dropna()
    if seeds.empty:
        return t_cell, none
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


def _drop_rows(columns: list[Column], name: str, label: str, min_base_hit10: float | None) -> list[Row]:
    pairs = [_drop_cells(c, name, min_base_hit10) for c in columns]
    if min_base_hit10 is None:
        paper = paper_cells(("drop_percent", name, "targeted"), 2)
        kinds = ((f"{label}: targeted", paper), (f"{label}: random control", ["—"] * len(paper)))
    else:
        where = f", checkpoints with base HIT@10 ≥ {min_base_hit10:g}"
        none = ["—"] * len(paper_cells(("drop_percent", name, "targeted"), 2))
        kinds = ((f"{label}: targeted{where}", none), (f"{label}: random control{where}", none))
    return [
        mark_best(Row(text, "drop_percent", [p[i] for p in pairs], paper))
        for i, (text, paper) in enumerate(kinds)
    ]


def table4(columns: list[Column], min_base_hit10: float = MIN_BASE_HIT10) -> ReportTable:
    """Table 4: HIT@10 drop (%) per ablation, targeted vs the matched random control.

    Per ablation, the paper-comparable rows (mean over every analysed checkpoint), then the same means over
    the checkpoints whose unablated HIT@10 is at least ``min_base_hit10``.
    """
    labels = ablation_labels(columns)
    rows = [row for name, label in labels.items() for row in _drop_rows(columns, name, label, None)]
    rows += [
        row for name, label in labels.items() for row in _drop_rows(columns, name, label, min_base_hit10)
    ]
    heldout = any(bool(t["heldout"].any()) for c in columns if (t := c.table("ablation")) is not None)
    notes = [
        "Drop % = 100·(HIT@10 base − ablated)/base per checkpoint, then the unweighted mean over every analysed "
        "checkpoint (the paper's Table 4); the rows marked 'checkpoints with base HIT@10 ≥ "
        f"{min_base_hit10:g}' average only the checkpoints that know the facts (near chance the ratio is "
        "meaningless; the threshold is --min-base-hit10). Random control: that mean for each seed, then "
        "mean ± sample sd over seeds (no sd with one seed).",
        "Units ranked on a held-out half of the examples (some runs)."
        if heldout
        else "Units ranked and evaluated on the same examples (no held-out split).",
        TABLE_NOTES["table4"],
        choices_note(columns, tuple(PAPER_CHOICES)),
    ]
    return ReportTable(
        "table4", "Table 4: HIT@10 drop (%) under ablation", [c.label for c in columns], rows, notes
    )


def build_tables(columns: list[Column], min_base_hit10: float = MIN_BASE_HIT10) -> list[ReportTable]:
    """Tables 2, 3 and 4 for these columns (``min_base_hit10``: Table 4's second, filtered rows)."""
    return [table2(columns), table3(columns), table4(columns, min_base_hit10)]
