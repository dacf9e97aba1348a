"""Which protocol choices each report column used, next to the paper's (shown under every paper comparison).

A choice that moves published numbers (data, duplicates, template, dtype, checkpoint grid, norm, target,
ranking; see ``experiments/sensitivity/``) is read from the runs' params and marked where it differs from
the paper's protocol (:data:`~gated_lpi_exp.report.paper.PAPER_CHOICES`).
"""

from __future__ import annotations

from gated_lpi_exp.report.paper import PAPER_CHOICES
from gated_lpi_exp.report.runs import Column

DIFFERS = "≠"
"""Marks a value that differs from the paper's protocol."""
ATTRIBUTION_CHOICES = tuple(k for k in PAPER_CHOICES if k != "ablation.rank_by")
"""The choices behind Tables 2–3 (every one but the ablation's ranking)."""
OPTIONAL_PARAMS = ("attribution.attn_positions", "attribution.compat")
"""Shown when a run logged them (options some versions of the package do not have)."""


def column_choices(column: Column, keys: tuple[str, ...]) -> str:
    """``tiny_moe: relations.source=bundled ≠, relations.duplicates=keep, ...`` (several values when the
    column's runs differ, e.g. ``ablation.rank_by=abs/signed``)."""
    parts = []
    for key in (*keys, *OPTIONAL_PARAMS):
        values = sorted({v for r in column.runs if (v := r.params.get(key)) is not None})
        if not values:
            if key in OPTIONAL_PARAMS:
                continue
            values = ["?"]
        matches = key in PAPER_CHOICES and all(v in PAPER_CHOICES[key][0] for v in values)
        mark = "" if matches or key not in PAPER_CHOICES else f" {DIFFERS}"
        parts.append(f"{key}={'/'.join(values)}{mark}")
    return f"{column.label}: {', '.join(parts)}"


def choices_note(columns: list[Column], keys: tuple[str, ...] = ATTRIBUTION_CHOICES) -> str:
    """One note: each column's choices, then the paper's; ``≠`` marks a choice unlike the paper's."""
    ours = "; ".join(column_choices(c, keys) for c in columns) or "no runs"
    paper = "; ".join(f"{k}={'/'.join(PAPER_CHOICES[k][0])} ({PAPER_CHOICES[k][1]})" for k in keys)
    return f"Choices of these runs ({DIFFERS} = unlike the paper): {ours}. The paper's: {paper}."
