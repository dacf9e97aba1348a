"""Runs measured under different conditions are never compared in one table: the report splits them into
sections, one per condition, and says what differs.

A run's condition is what its numbers depend on besides the model: its examples (``data.hash``), relation
selection, checkpoint selection (``checkpoints.*``: two series with different step grids, such as OLMoE's and
OLMo's, are compared at the checkpoints one selection picks from each) and protocol choices (attribution,
dynamics and evaluation settings, and among runs with an ablation, how units are ranked and evaluated).
Settings that change only speed or memory (batch sizes, memory budgets, cache folders) are not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gated_lpi_exp.report.runs import Column, RunData, make_columns
from gated_lpi_exp.tracking.names import DATA_HASH_PARAM

CONDITION_PREFIXES = ("relations.", "checkpoints.", "attribution.", "dynamics.", "evaluation.")
"""Params (by prefix) whose values are part of a run's condition, besides the data hash."""
ABLATION_PROTOCOL = ("ablation.rank_by", "ablation.heldout", "ablation.random_seeds")
"""Ablation params that change what a drop measures (compared among runs that ran an ablation)."""
NOT_CONDITION = (
    "attribution.batch_size",
    "attribution.memory_budget_mb",
    "attribution.min_memory_budget_mb",
    "attribution.cache_dir",
    "attribution.use_cache",
    "attribution.top_n_logged",
    "evaluation.batch_size",
)
"""Params under those prefixes that change only speed, memory or what is logged."""


@dataclass
class Section:
    """Runs that share one condition, as report columns, with what sets the section apart."""

    columns: list[Column]
    differs: dict[str, str]
    """Setting -> this section's value, for the settings that differ between sections (empty when the
    report has one section)."""


def condition(data: RunData, with_ablation: bool = True) -> dict[str, str]:
    """The settings a run's numbers depend on besides the model (see the module docstring)."""
    found = {
        key: value
        for key, value in data.params.items()
        if key.startswith(CONDITION_PREFIXES) and key not in NOT_CONDITION
    }
    found["data.hash"] = data.params.get(DATA_HASH_PARAM, "unknown")
    if with_ablation and data.ablation != "none":
        found |= {key: data.params.get(key, "unknown") for key in ABLATION_PROTOCOL}
    return found


def _key(settings: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(settings.items()))


def split_sections(runs: list[RunData]) -> list[Section]:
    """Group runs into sections of equal condition, the newest run's first.

    Runs are grouped by every setting but the ablation protocol, then the runs with an ablation by their
    protocol; runs without an ablation join the first such section of their group.
    """
    groups: dict[tuple, list[RunData]] = {}
    for data in sorted(runs, key=lambda d: -(d.run.info.start_time or 0)):
        groups.setdefault(_key(condition(data, with_ablation=False)), []).append(data)
    parts: list[list[RunData]] = []
    for members in groups.values():
        by_protocol: dict[tuple, list[RunData]] = {}
        for data in members:
            if data.ablation != "none":
                by_protocol.setdefault(_key(condition(data)), []).append(data)
        split = list(by_protocol.values()) or [[]]
        split[0] = [m for m in members if m.ablation == "none"] + split[0]
        parts += split
    conditions = [condition(next((m for m in p if m.ablation != "none"), p[0])) for p in parts]
    differing = _differing(conditions) if len(parts) > 1 else []
    return [
        Section(make_columns(p), {k: c.get(k, "(not set)") for k in differing})
        for p, c in zip(parts, conditions, strict=True)
    ]


def _differing(conditions: list[dict[str, str]]) -> list[str]:
    keys = sorted({k for c in conditions for k in c})
    return [k for k in keys if len({c.get(k, "(not set)") for c in conditions}) > 1]


def explain(sections: list[Section]) -> str:
    """Why the report is split, in one sentence (empty for one section)."""
    if len(sections) < 2:
        return ""
    keys = sorted({k for s in sections for k in s.differs})
    return (
        f"These runs were not measured under the same conditions, so they are not compared in one table: "
        f"they differ in {', '.join(keys)}. Each of the {len(sections)} sections below compares only runs "
        "that share them."
    )
