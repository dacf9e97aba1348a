"""One report value from several suite seeds: their mean, their spread, and a bootstrap interval.

Every run of a column resamples the same examples in bootstrap replicate ``r`` (an example's weights depend
only on the example and ``statistics.seed``), so the interval of the mean over seeds is the percentile
interval of the replicate-wise mean over seeds. That interval is about the examples asked; the spread over
seeds (sample sd) is about training; a column shows both.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gated_lpi_exp.metrics.bootstrap import drop_percent_replicates, example_weights, percentile_interval
from gated_lpi_exp.report.runs import Column


@dataclass
class Combined:
    """A value combined over the seeds that have it."""

    value: float
    sd: float | None = None
    """Sample sd over seeds (None with one seed)."""
    ci: tuple[float, float] | None = None
    """Bootstrap interval over examples of the seed mean (None without replicates)."""
    baseline: float | None = None
    """Random-set baseline (None for metrics without one)."""
    n_seeds: int = 1
    per_seed: list[float] = field(default_factory=list)
    """The value of each seed, in the column's seed order."""
    replicates: np.ndarray | None = None
    """``[R]`` the replicate-wise mean over seeds (what ``ci`` is the interval of); None without replicates."""


def combine(values: list[float], replicates: list[np.ndarray | None], level: float) -> Combined:
    """Mean and sd of per-seed values, and the interval of their replicate-wise mean.

    Args:
        values: One value per seed.
        replicates: Per seed its replicates ``[R]`` (aligned by replicate index), or None.
        level: Interval coverage.
    """
    arr = np.asarray(values, dtype=np.float64)
    sd = float(np.std(arr, ddof=1)) if len(arr) > 1 else None
    ci, mean_replicates = None, None
    present = [r for r in replicates if r is not None]
    if present and len(present) == len(replicates) and len({len(r) for r in present}) == 1:
        mean_replicates = np.mean(np.stack(present), axis=0)  # [R]
        low, high = percentile_interval(mean_replicates, level)
        ci = (float(low), float(high))
    return Combined(
        float(arr.mean()), sd, ci, n_seeds=len(arr), per_seed=arr.tolist(), replicates=mean_replicates
    )


def level_of(column: Column) -> float:
    """The interval coverage the column's runs used."""
    return float(column.param("statistics.level") or 0.95)


def summary_value(column: Column, metric: str, unit: str, window: str) -> Combined | None:
    """A dynamics summary value combined over the column's seeds (None: no seed has it)."""
    values, reps, baselines = [], [], []
    for seed in column.seeds:
        table = column.table("dynamics_summary", seed)
        if table is None:
            continue
        hit = table[(table["metric"] == metric) & (table["unit"] == unit) & (table["window"] == window)]
        if hit.empty:
            continue
        values.append(float(hit["value"].iloc[0]))
        baselines.append(float(hit["baseline"].iloc[0]) if "baseline" in hit else math.nan)
        replicates = column.table("dynamics_replicates", seed)
        part = None
        if replicates is not None:
            sel = replicates[
                (replicates["metric"] == metric)
                & (replicates["unit"] == unit)
                & (replicates["window"] == window)
            ]
            part = sel.sort_values("replicate")["value"].to_numpy() if len(sel) else None
        reps.append(part)
    if not values:
        return None
    out = combine(values, reps, level_of(column))
    if len(values) == 1 and reps[0] is None:
        ci = _stored_interval(column, metric, unit, window)
        out.ci = ci
    finite = [b for b in baselines if not math.isnan(b)]
    out.baseline = float(np.mean(finite)) if finite else None
    return out


def _stored_interval(column: Column, metric: str, unit: str, window: str) -> tuple[float, float] | None:
    table = column.table("dynamics_summary")
    if table is None or "ci_low" not in table:
        return None
    hit = table[(table["metric"] == metric) & (table["unit"] == unit) & (table["window"] == window)]
    low, high = float(hit["ci_low"].iloc[0]), float(hit["ci_high"].iloc[0])
    return None if math.isnan(low) else (low, high)


DROP_CONDITIONS = ("targeted", "random", "difference")
"""What :func:`drop_values` returns: targeted drop, random-control drop, targeted minus random."""


def drop_values(column: Column, ablation: str, min_base: float) -> dict[str, Combined | None]:
    """Checkpoint-mean HIT@10 drops of one ablation, combined over seeds (computed once per column).

    A seed's drop is the mean over its checkpoints whose base HIT@10 is at least ``min_base``; the random
    control is that mean per random seed, then averaged over random seeds; ``difference`` is targeted minus
    random. Intervals come from the per-example outcomes (``ablation_examples``) of each seed.
    """
    key = ("drops", ablation, min_base)
    if key not in column.derived:
        column.derived[key] = _drop_values(column, ablation, min_base)
    return column.derived[key]


def _drop_values(column: Column, ablation: str, min_base: float) -> dict[str, Combined | None]:
    per: dict[str, list] = {c: [] for c in DROP_CONDITIONS}
    reps: dict[str, list] = {c: [] for c in DROP_CONDITIONS}
    resamples = int(column.param("statistics.resamples") or 0)
    stat_seed = int(column.param("statistics.seed") or 0)
    for seed in column.seeds:
        table = column.table("ablation", seed)
        if table is None or table[table["ablation"] == ablation].empty:
            continue
        part = table[table["ablation"] == ablation]
        base = part[part["condition"] == "base"].groupby("step")["hit_at_10"].mean()  # [S]
        steps = base.index[base >= min_base]
        values = _point_drops(part[part["step"].isin(steps)])
        examples = column.table("ablation_examples", seed)
        rep = (
            _replicate_drops(examples, ablation, steps, resamples, stat_seed)
            if examples is not None
            else None
        )
        for c in DROP_CONDITIONS:
            per[c].append(values[c])
            reps[c].append(None if rep is None else rep[c])
    level = level_of(column)
    out: dict[str, Combined | None] = {}
    for c in DROP_CONDITIONS:
        finite = [(v, r) for v, r in zip(per[c], reps[c], strict=True) if not math.isnan(v)]
        out[c] = combine([v for v, _ in finite], [r for _, r in finite], level) if finite else None
    return out


def _point_drops(part: pd.DataFrame) -> dict[str, float]:
    targeted = part[part["condition"] == "targeted"].groupby("step")["drop_percent"].mean()  # [S]
    random = part[part["condition"] == "random"].groupby("seed")["drop_percent"].mean()  # [seeds]
    t = float(np.nanmean(targeted)) if targeted.notna().any() else math.nan
    r = float(random.mean()) if random.notna().any() else math.nan
    return {"targeted": t, "random": r, "difference": t - r}


def _replicate_drops(
    examples: pd.DataFrame, ablation: str, steps, resamples: int, seed: int
) -> dict[str, np.ndarray] | None:
    """Replicates ``[R]`` of the three checkpoint-mean drops, from per-example outcomes."""
    part = examples[(examples["ablation"] == ablation) & examples["step"].isin(steps)]
    if resamples == 0 or part.empty:
        return None
    per_step: dict[str, list[np.ndarray]] = {"targeted": [], "random": []}
    for _, at_step in part.groupby("step"):
        base = at_step[at_step["condition"] == "base"].sort_values(["relation", "sample_id"])
        weights = example_weights(base["relation"].tolist(), base["sample_id"].tolist(), resamples, seed)
        rand: list[np.ndarray] = []
        for (condition, _), rows in at_step[at_step["condition"] != "base"].groupby(["condition", "seed"]):
            rows = rows.sort_values(["relation", "sample_id"])
            drops = drop_percent_replicates(
                base["hit_at_10"].to_numpy(), rows["hit_at_10"].to_numpy(), weights
            )
            (per_step["targeted"] if condition == "targeted" else rand).append(drops)
        if rand:
            per_step["random"].append(np.mean(rand, axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate undefined at every step stays NaN
        out = {c: np.nanmean(np.stack(v), axis=0) if v else None for c, v in per_step.items()}
    if out["targeted"] is None or out["random"] is None:
        return None
    return {
        "targeted": out["targeted"],
        "random": out["random"],
        "difference": out["targeted"] - out["random"],
    }
