"""The knowledge-dynamics stage: layer profiles, J_stab / R_t curves, and windowed summaries (Tables 2-3).

Every metric comes from :mod:`gated_lpi_exp.metrics`; this stage arranges checkpoints, windows and tables.

Neuron curves are computed one consecutive pair of checkpoints at a time, so memory holds two checkpoints'
scores whatever the number of checkpoints (OLMoE has ~1M FFN neurons per checkpoint). A window is a contiguous
run of the step-sorted checkpoints, so its J_t / R_t values are exactly the whole-range curve values whose
two checkpoints both lie in the window: window means are read off the whole-range curve, which is the same
number as restricting the checkpoints first and recomputing.

MLflow metric names (:func:`metric_name`, :func:`dynamics_metrics`), with ``<unit>`` in ``ffn | attn``:

- per step (logged with ``step=`` the later checkpoint of the pair): ``j_stab.<unit>``, ``r_t.<unit>``;
- whole range: ``j_stab.<unit>.mean``, ``r_t.<unit>.mean`` (curve means), ``rho_avg.<unit>``,
  ``sigma_rel.<unit>`` (single values);
- named window ``<w>`` of ``dynamics.windows``: ``<metric>.<unit>.<w>`` for all four metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig
from gated_lpi_exp.metrics import (
    cross_step_cv,
    get_metric,
    jaccard_stability,
    layer_consistency,
    positive_gain_concentration,
    window_mask,
)
from gated_lpi_exp.schemas import DataFrame, DynamicsCurve, DynamicsSummary, LayerProfile

log = logging.getLogger(__name__)

UNITS: dict[str, tuple[str, str]] = {"ffn": ("ffn", "ffn_layer"), "attn": ("attn", "attn_layer")}
"""Unit -> (neuron score kind, layer score kind) of :class:`CheckpointAggregate`."""
CURVE_METRICS = ("j_stab", "r_t")
"""Metrics with a value per consecutive checkpoint pair; their summary is the registry's aggregation."""
PROFILE_METRICS = ("rho_avg", "sigma_rel")
"""Metrics with one value per window, computed on the layer profiles."""
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


def _pair_curves(ordered: list[CheckpointAggregate], kind: str, top_frac: float) -> dict[str, np.ndarray]:
    """J_t and R_t of consecutive checkpoint pairs, two checkpoints in memory at a time: each ``[S-1]``."""
    n_pairs = len(ordered) - 1
    out = {"j_stab": np.full(n_pairs, np.nan), "r_t": np.full(n_pairs, np.nan)}
    for t in range(n_pairs):
        pair = np.stack([ordered[t].scores(kind), ordered[t + 1].scores(kind)])  # [2, L, N]
        out["j_stab"][t] = jaccard_stability(pair, top_frac)[1][0]
        out["r_t"][t] = positive_gain_concentration(pair, top_frac)[0]
    return out


def _window_rows(
    name: str,
    mask: np.ndarray,
    curves: dict[str, dict[str, np.ndarray]],
    profiles: dict[str, np.ndarray],
) -> list[dict]:
    """Summary rows of one window: four metrics x two units (NaN when it holds < 2 checkpoints)."""
    n = int(mask.sum())
    pairs = mask[:-1] & mask[1:]  # [S-1]: both checkpoints of the pair inside the window
    rows = []
    for unit in UNITS:
        values = dict.fromkeys(CURVE_METRICS + PROFILE_METRICS, math.nan)
        if n >= 2:
            for metric in CURVE_METRICS:
                values[metric] = get_metric(metric).aggregate(curves[unit][metric][pairs])
            prof = profiles[unit][mask]  # [n, L]
            values["rho_avg"] = layer_consistency(prof) if prof.shape[1] >= 2 else math.nan
            values["sigma_rel"] = cross_step_cv(prof)
        rows += [dict(metric=m, unit=unit, window=name, value=v, n_checkpoints=n) for m, v in values.items()]
    return rows


def _windows(cfg: DynamicsConfig) -> dict[str, tuple[int | None, int | None]]:
    clash = [w for w in cfg.windows if w in _RESERVED_WINDOWS]
    if clash:
        raise ValueError(f"dynamics.windows may not be named {clash}: {_RESERVED_WINDOWS} are reserved names")
    windows: dict[str, tuple[int | None, int | None]] = {WHOLE_RANGE: (None, None)}
    for name, (start, stop) in cfg.windows.items():
        windows[str(name)] = (start, stop)
    return windows


def compute_dynamics(
    aggregates: Sequence[CheckpointAggregate], cfg: DynamicsConfig
) -> tuple[DataFrame[DynamicsCurve], DataFrame[DynamicsSummary]]:
    """J_t / R_t curves and the windowed summaries of J_stab, R_t, ρ_avg and σ_rel (paper Tables 2-3).

    Args:
        aggregates: One per checkpoint, any order (sorted by step here; steps must be distinct).
        cfg: ``top_frac`` of the top sets and the named step windows (start inclusive, stop exclusive).

    Returns:
        ``(curves, summary)``. ``curves``: one row per (metric, unit, consecutive pair), at the pair's later
        step. ``summary``: one row per (metric, unit, window) for window ``all`` and each named window; a
        window with fewer than 2 checkpoints has NaN values (a warning is logged) and its ``n_checkpoints``.

    Raises:
        ValueError: No aggregates, a repeated step, or a window named ``all`` / ``mean``.
    """
    ordered = _ordered(aggregates)
    windows = _windows(cfg)
    steps = np.array([a.step for a in ordered])  # [S]
    curves = {unit: _pair_curves(ordered, kind, cfg.top_frac) for unit, (kind, _) in UNITS.items()}
    profiles = {unit: np.stack([a.scores(lk) for a in ordered]) for unit, (_, lk) in UNITS.items()}  # [S, L]
    curve_rows = [
        dict(metric=metric, unit=unit, step=int(step), value=float(value))
        for unit, by_metric in curves.items()
        for metric, curve in by_metric.items()
        for step, value in zip(steps[1:], curve, strict=True)
    ]
    summary_rows = []
    for name, (start, stop) in windows.items():
        mask = window_mask(steps.tolist(), start, stop)  # [S]
        if mask.sum() < 2:
            log.warning(
                "dynamics window %r [%s, %s) holds %d checkpoint(s) (steps %s); needs >= 2, metrics are NaN",
                name, start, stop, int(mask.sum()), steps[mask].tolist(),
            )  # fmt: skip
        summary_rows += _window_rows(name, mask, curves, profiles)
    curve_table = pd.DataFrame(curve_rows, columns=["metric", "unit", "step", "value"])
    return DynamicsCurve.check(curve_table), DynamicsSummary.check(pd.DataFrame(summary_rows))


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
        per_step.setdefault(int(row.step), {})[metric_name(row.metric, row.unit)] = float(row.value)
    totals = {
        metric_name(row.metric, row.unit, row.window): float(row.value)
        for row in summary.itertuples(index=False)
    }
    return per_step, totals
