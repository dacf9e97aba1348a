"""The knowledge-dynamics stage: layer profiles, J_stab / R_t curves, and windowed summaries (Tables 2-3).

Every metric comes from :mod:`gated_lpi_exp.metrics`; this stage arranges checkpoints, windows and tables.

Neuron curves are computed one consecutive pair of checkpoints at a time, so memory holds two checkpoints'
scores whatever the number of checkpoints (OLMoE has ~1M FFN neurons per checkpoint). A window is a contiguous
run of the step-sorted checkpoints, so its J_t / R_t values are exactly the whole-range curve values whose
two checkpoints both lie in the window: window means are read off the whole-range curve, which is the same
number as restricting the checkpoints first and recomputing.

MLflow metric names (:func:`metric_name`, :func:`dynamics_metrics`), with ``<unit>`` in ``ffn | attn``:

- per step (logged with ``step=`` the later checkpoint of the pair): ``j_stab.<unit>``, ``r_t.<unit>``,
  ``r_t_pop.<unit>``;
- whole range: ``j_stab.<unit>.mean``, ``r_t.<unit>.mean``, ``r_t_pop.<unit>.mean`` (curve means),
  ``rho_avg.<unit>``, ``sigma_rel.<unit>`` (single values);
- named window ``<w>`` of ``dynamics.windows``: ``<metric>.<unit>.<w>`` for every metric;
- each of these with ``.ci_low`` / ``.ci_high`` (bootstrap interval) and, for the set metrics,
  ``.baseline`` (closed-form random-set value) appended, where defined.

Intervals: every bootstrap replicate of the checkpoints' mean scores goes through the same curve and window
code as the means themselves (:mod:`gated_lpi_exp.metrics.series`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig, StatisticsConfig
from gated_lpi_exp.metrics import window_mask
from gated_lpi_exp.metrics.bootstrap import percentile_interval
from gated_lpi_exp.metrics.series import (
    CURVE_METRICS,
    ReplicateSeries,
    pair_values,
    replicate_series,
    set_baselines,
    window_summary,
)
from gated_lpi_exp.schemas import DataFrame, DynamicsCurve, DynamicsReplicates, DynamicsSummary, LayerProfile

log = logging.getLogger(__name__)

UNITS: dict[str, tuple[str, str]] = {"ffn": ("ffn", "ffn_layer"), "attn": ("attn", "attn_layer")}
"""Unit -> (neuron score kind, layer score kind) of :class:`CheckpointAggregate`."""
WHOLE_RANGE = "all"
"""Window name of the whole checkpoint range in :class:`DynamicsSummary`."""
_RESERVED_WINDOWS = (WHOLE_RANGE, "mean")


def metric_name(metric: str, unit: str, window: str | None = None) -> str:
    """The MLflow metric name of one dynamics value (the scheme is in the module docstring).

    Args:
        metric: One of :data:`CURVE_METRICS` or :data:`PROFILE_METRICS`.
        unit: ``ffn`` or ``attn``.
        window: None for a per-step curve value, :data:`WHOLE_RANGE` or a window name for a summary.

    Returns:
        e.g. ``j_stab.ffn`` (curve), ``j_stab.ffn.mean``, ``rho_avg.attn``, ``sigma_rel.ffn.early``.
    """
    base = f"{metric}.{unit}"
    if window is None:
        return base
    if window == WHOLE_RANGE:
        return f"{base}.mean" if metric in CURVE_METRICS else base
    return f"{base}.{window}"


def _ordered(aggregates: Sequence[CheckpointAggregate]) -> list[CheckpointAggregate]:
    if not aggregates:
        raise ValueError("the dynamics stage needs at least one checkpoint aggregate")
    ordered = sorted(aggregates, key=lambda a: a.step)
    steps = [a.step for a in ordered]
    if len(set(steps)) != len(steps):
        raise ValueError(f"checkpoint aggregates repeat a training step: {steps}")
    return ordered


def layer_profiles(aggregates: Sequence[CheckpointAggregate]) -> DataFrame[LayerProfile]:
    """Mean layer importance per checkpoint: relation ``all`` (every example) and each relation.

    Args:
        aggregates: One per checkpoint, any order.

    Returns:
        Long table, one row per (step, unit, relation, layer), sorted by step.
    """
    blocks: list[tuple[int, str, str, np.ndarray]] = []
    for agg in _ordered(aggregates):
        for unit, (_, layer_kind) in UNITS.items():
            blocks.append((agg.step, unit, WHOLE_RANGE, np.asarray(agg.scores(layer_kind))))  # [L]
            for relation, kinds in sorted(agg.per_relation.items()):
                if layer_kind in kinds:
                    blocks.append((agg.step, unit, relation, np.asarray(kinds[layer_kind])))  # [L]
    sizes = [b[3].shape[0] for b in blocks]
    table = pd.DataFrame(
        {
            "step": np.repeat([b[0] for b in blocks], sizes),
            "unit": np.repeat([b[1] for b in blocks], sizes),
            "relation": np.repeat([b[2] for b in blocks], sizes),
            "layer": np.concatenate([np.arange(n) for n in sizes]),
            "importance": np.concatenate([b[3] for b in blocks]).astype(np.float64),
        }
    )
    return LayerProfile.check(table)


def _curves(ordered: list[CheckpointAggregate], kind: str, top_frac: float) -> dict[str, np.ndarray]:
    """Curve metrics of consecutive pairs of the mean scores, two checkpoints in memory at a time:
    each ``[S-1]``."""
    out = {m: np.full(len(ordered) - 1, np.nan) for m in CURVE_METRICS}
    for t in range(len(ordered) - 1):
        for metric, value in pair_values(
            ordered[t].scores(kind), ordered[t + 1].scores(kind), top_frac
        ).items():
            out[metric][t] = value
    return out


def _replicates(
    ordered: list[CheckpointAggregate], kind: str, layer_kind: str, masks: dict, top_frac: float
) -> ReplicateSeries | None:
    """Every bootstrap replicate's curves and summaries, when every checkpoint carries replicates."""
    reps = [
        a.replicates for a in ordered if a.replicates and kind in a.replicates and layer_kind in a.replicates
    ]
    if len(reps) != len(ordered):
        return None
    layers = np.stack([r[layer_kind] for r in reps], axis=1).astype(np.float64)  # [R, S, L]
    return replicate_series([r[kind] for r in reps], layers, masks, top_frac)


def _windows(cfg: DynamicsConfig) -> dict[str, tuple[int | None, int | None]]:
    clash = [w for w in cfg.windows if w in _RESERVED_WINDOWS]
    if clash:
        raise ValueError(f"dynamics.windows may not be named {clash}: {_RESERVED_WINDOWS} are reserved names")
    windows: dict[str, tuple[int | None, int | None]] = {WHOLE_RANGE: (None, None)}
    for name, (start, stop) in cfg.windows.items():
        windows[str(name)] = (start, stop)
    return windows


def _masks(cfg: DynamicsConfig, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Window name -> checkpoints inside it ``[S]``; warns about windows too short for any metric."""
    masks = {}
    for name, (start, stop) in _windows(cfg).items():
        masks[name] = window_mask(steps.tolist(), start, stop)  # [S]
        if masks[name].sum() < 2:
            log.warning(
                "dynamics window %r [%s, %s) holds %d checkpoint(s) (steps %s); needs >= 2, metrics are NaN",
                name, start, stop, int(masks[name].sum()), steps[masks[name]].tolist(),
            )  # fmt: skip
    return masks


def compute_dynamics(
    aggregates: Sequence[CheckpointAggregate],
    cfg: DynamicsConfig,
    statistics: StatisticsConfig | None = None,
) -> tuple[DataFrame[DynamicsCurve], DataFrame[DynamicsSummary], DataFrame[DynamicsReplicates]]:
    """J_t / R_t curves and the windowed summaries of every dynamics metric (paper Tables 2-3), with
    bootstrap intervals and random-set baselines.

    Args:
        aggregates: One per checkpoint, any order (sorted by step here; steps must be distinct). Intervals
            need every aggregate to carry bootstrap replicates.
        cfg: ``top_frac`` of the top sets and the named step windows (start inclusive, stop exclusive).
        statistics: Interval level and seeds of the empirical baselines; None: no intervals, closed-form
            baselines only.

    Returns:
        ``(curves, summary, replicates)``. ``curves``: one row per (metric, unit, consecutive pair), at the
        pair's later step, with its interval and baseline. ``summary``: one row per (metric, unit, window)
        for window ``all`` and each named window, with ``ci_low``/``ci_high`` (NaN without replicates),
        ``baseline`` (closed form) and ``baseline_empirical`` (seeded random sets), NaN for ρ_avg/σ_rel; a
        window with fewer than 2 checkpoints has NaN values (a warning is logged). ``replicates``: every
        summary value of every bootstrap replicate (empty without replicates), so runs that share examples
        can be combined replicate by replicate.

    Raises:
        ValueError: No aggregates, a repeated step, or a window named ``all`` / ``mean``.
    """
    ordered = _ordered(aggregates)
    steps = np.array([a.step for a in ordered])  # [S]
    masks = _masks(cfg, steps)
    stats = statistics or StatisticsConfig(resamples=0)
    curve_rows, summary_rows, replicate_rows = [], [], []
    for unit, (kind, layer_kind) in UNITS.items():
        point = _curves(ordered, kind, cfg.top_frac)
        profiles = np.stack([a.scores(layer_kind) for a in ordered])  # [S, L]
        reps = _replicates(ordered, kind, layer_kind, masks, cfg.top_frac) if stats.resamples else None
        base = set_baselines(
            [a.scores(kind) for a in ordered], masks, cfg.top_frac, stats.baseline_draws, stats.seed
        )
        level = stats.level
        curve_rows += _curve_rows(unit, steps, point, reps, base, level)
        for name, mask in masks.items():
            values = window_summary(point, profiles, mask)
            window_reps = reps.windows[name] if reps else None
            summary_rows += _summary_rows(unit, name, int(mask.sum()), values, window_reps, base, level)
            if window_reps is not None:
                replicate_rows += [
                    dict(metric=m, unit=unit, window=name, replicate=r, value=float(v))
                    for m, vals in window_reps.items()
                    for r, v in enumerate(vals)
                ]
    return (
        DynamicsCurve.check(pd.DataFrame(curve_rows, columns=list(DynamicsCurve.to_schema().columns))),
        DynamicsSummary.check(pd.DataFrame(summary_rows)),
        DynamicsReplicates.check(
            pd.DataFrame(replicate_rows, columns=list(DynamicsReplicates.to_schema().columns))
        ),
    )


def _curve_rows(unit, steps, point, reps, base, level) -> list[dict]:
    rows = []
    for metric, curve in point.items():
        low, high = (np.full(curve.shape, np.nan),) * 2
        if reps is not None:
            low, high = percentile_interval(reps.curves[metric], level)  # [S-1] each
        for t, step in enumerate(steps[1:]):
            rows.append(
                dict(metric=metric, unit=unit, step=int(step), value=float(curve[t]), ci_low=float(low[t]),
                     ci_high=float(high[t]), baseline=base.expected.get(metric, math.nan))
            )  # fmt: skip
    return rows


def _summary_rows(unit, window, n, values, window_reps, base, level) -> list[dict]:
    rows = []
    for metric, value in values.items():
        low = high = math.nan
        if window_reps is not None and n >= 2:
            low, high = (float(x) for x in percentile_interval(window_reps[metric], level))
        rows.append(
            dict(metric=metric, unit=unit, window=window, value=value, n_checkpoints=n, ci_low=low,
                 ci_high=high, baseline=base.expected.get(metric, math.nan) if n >= 2 else math.nan,
                 baseline_empirical=base.empirical[window].get(metric, math.nan))
        )  # fmt: skip
    return rows


def dynamics_metrics(
    curves: DataFrame[DynamicsCurve], summary: DataFrame[DynamicsSummary]
) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """The dynamics tables as MLflow metrics, named by :func:`metric_name`.

    Args:
        curves: From :func:`compute_dynamics`.
        summary: From :func:`compute_dynamics`.

    Returns:
        ``(per_step, totals)``: ``per_step[step] = {"j_stab.ffn": ..., "r_t.attn": ...}`` (log each with
        ``step=step``) and ``totals = {"j_stab.ffn.mean": ..., "rho_avg.attn": ..., "r_t.ffn.early": ...}``.
        Values may be NaN (``Tracker.log_metrics`` skips them).
    """
    per_step: dict[int, dict[str, float]] = {}
    for row in curves.itertuples(index=False):
        name = metric_name(row.metric, row.unit)
        per_step.setdefault(int(row.step), {}).update(_with_extras(name, row))
    totals: dict[str, float] = {}
    for row in summary.itertuples(index=False):
        totals.update(_with_extras(metric_name(row.metric, row.unit, row.window), row))
    return per_step, totals


def _with_extras(name: str, row) -> dict[str, float]:
    """``name`` -> value, and ``name.ci_low`` / ``.ci_high`` / ``.baseline`` where they are defined."""
    out = {name: float(row.value)}
    for extra in ("ci_low", "ci_high", "baseline"):
        value = float(getattr(row, extra))
        if not math.isnan(value):
            out[f"{name}.{extra}"] = value
    return out
