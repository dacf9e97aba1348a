"""The knowledge-dynamics stage: layer profiles, per-step curves and windowed summaries (Tables 2-3).

Which metrics it computes comes from the registry (:mod:`gated_lpi_exp.metrics.registry`): every metric with
input ``pair`` is computed on each consecutive pair of checkpoints (a curve, summarised per window by the
metric's aggregation), every metric with input ``profile`` on each window's layer profiles. This stage only
arranges checkpoints, windows and tables; registering a metric is enough for it to appear here.

Neuron curves are computed one consecutive pair of checkpoints at a time, so memory holds two checkpoints'
scores whatever the number of checkpoints (OLMoE has ~1M FFN neurons per checkpoint). A window is a contiguous
run of the step-sorted checkpoints, so its curve values are exactly the whole-range curve values whose
two checkpoints both lie in the window: window summaries are read off the whole-range curve, which is the same
number as restricting the checkpoints first and recomputing.

Tables (:func:`compute_dynamics`): ``dynamics_curves`` and ``dynamics_summary`` for single-value metrics;
``dynamics_layer_curves`` and ``dynamics_layer_summary`` (a ``layer`` column more) for per-layer metrics;
``dynamics_lagged`` for the ``lagged_pair`` metrics on ``dynamics.lagged_pairs`` (:mod:`.lagged`).

MLflow metric names (:func:`metric_name`, :func:`dynamics_metrics`), with ``<unit>`` in ``ffn | attn``:

- per step (logged with ``step=`` the later checkpoint of the pair): ``<metric>.<unit>`` for each pair
  metric (``j_stab.ffn``, ``r_t.attn``), ``<metric>.<unit>.layer<L>`` for each per-layer one;
- whole range: ``<metric>.<unit>.mean`` for pair metrics (the curve's aggregate), ``<metric>.<unit>`` for
  profile metrics (``rho_avg.ffn``, ``sigma_rel.attn``);
- named window ``<w>`` of ``dynamics.windows``: ``<metric>.<unit>.<w>``;
- lagged pair ``[a, b]``: ``<metric>.<unit>.<a>_<b>`` and its random baseline ``<metric>.<unit>.<a>_<b>.random``.

Per-layer summaries stay in their table (one MLflow metric per layer and window would flood the UI).

How sure each value is (:mod:`gated_lpi_exp.metrics.series`): every bootstrap replicate of the checkpoints'
mean scores goes through the same curve and window code as the means themselves, giving ``ci_low`` /
``ci_high``; a metric registered with a ``baseline`` hook also gets ``baseline`` (closed form for random unit
sets of the same size) and, in the summaries, ``baseline_empirical`` (mean over seeded random sets). In MLflow,
``.ci_low`` / ``.ci_high`` / ``.baseline`` are appended to the single-value names where defined.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig, StatisticsConfig
from gated_lpi_exp.metrics import MetricSpec, get_metric, metrics_for, window_mask
from gated_lpi_exp.metrics.bootstrap import percentile_interval
from gated_lpi_exp.metrics.series import ReplicateSeries
from gated_lpi_exp.schemas import (
    DataFrame,
    DynamicsCurve,
    DynamicsLayerCurve,
    DynamicsLayerSummary,
    DynamicsReplicates,
    DynamicsSummary,
    LayerProfile,
)
from gated_lpi_exp.stages.dynamics_series import UnitSeries, unit_series
from gated_lpi_exp.stages.lagged import lagged_metrics, lagged_overlaps

log = logging.getLogger(__name__)

UNITS: dict[str, tuple[str, str]] = {"ffn": ("ffn", "ffn_layer"), "attn": ("attn", "attn_layer")}
"""Unit -> (neuron score kind, layer score kind) of :class:`CheckpointAggregate`."""
WHOLE_RANGE = "all"
"""Window name of the whole checkpoint range in :class:`DynamicsSummary`."""
_RESERVED_WINDOWS = (WHOLE_RANGE, "mean")


def metric_name(metric: str, unit: str, window: str | None = None, layer: int | None = None) -> str:
    """The MLflow metric name of one dynamics value (the scheme is in the module docstring).

    Args:
        metric: A registered metric with input ``pair`` or ``profile``.
        unit: ``ffn`` or ``attn``.
        window: None for a per-step curve value, :data:`WHOLE_RANGE` or a window name for a summary.
        layer: The layer of a per-layer metric's value; None for single-value metrics.

    Returns:
        e.g. ``j_stab.ffn`` (curve), ``j_stab.ffn.mean``, ``rho_avg.attn``, ``sigma_rel.ffn.early``,
        ``r_t_layer.ffn.layer3``.
    """
    base = f"{metric}.{unit}" if layer is None else f"{metric}.{unit}.layer{layer}"
    if window is None:
        return base
    if window == WHOLE_RANGE:
        return f"{base}.mean" if get_metric(metric).input == "pair" else base
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


def _windows(cfg: DynamicsConfig) -> dict[str, tuple[int | None, int | None]]:
    clash = [w for w in cfg.windows if w in _RESERVED_WINDOWS]
    if clash:
        raise ValueError(f"dynamics.windows may not be named {clash}: {_RESERVED_WINDOWS} are reserved names")
    windows: dict[str, tuple[int | None, int | None]] = {WHOLE_RANGE: (None, None)}
    for name, (start, stop) in cfg.windows.items():
        windows[str(name)] = (start, stop)
    return windows


def _masks(cfg: DynamicsConfig, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Window name -> the checkpoints inside it ``[S]``; warns about windows too short for any metric."""
    masks = {}
    for name, (start, stop) in _windows(cfg).items():
        masks[name] = mask = window_mask(steps.tolist(), start, stop)  # [S]
        if mask.sum() < 2:
            log.warning(
                "dynamics window %r [%s, %s) holds %d checkpoint(s) (steps %s); needs >= 2, metrics are NaN",
                name, start, stop, int(mask.sum()), steps[mask].tolist(),
            )  # fmt: skip
    return masks


def compute_dynamics(
    aggregates: Sequence[CheckpointAggregate],
    cfg: DynamicsConfig,
    statistics: StatisticsConfig | None = None,
) -> dict[str, pd.DataFrame]:
    """Curves and windowed summaries of every registered dynamics metric (paper Tables 2-3), with bootstrap
    intervals and random-set baselines.

    Args:
        aggregates: One per checkpoint, any order (sorted by step here; steps must be distinct). Intervals
            need every aggregate to carry bootstrap replicates.
        cfg: ``top_frac`` of the top sets and the named step windows (start inclusive, stop exclusive).
        statistics: Interval level and the seeded empirical baselines; None: no intervals, closed-form
            baselines only.

    Returns:
        Tables by name. ``dynamics_curves``: one row per (pair metric, unit, consecutive pair), at the pair's
        later step, with its interval and closed-form baseline. ``dynamics_summary``: one row per (metric,
        unit, window) for window ``all`` and each named window, with ``ci_low`` / ``ci_high`` (NaN without
        replicates), ``baseline`` and ``baseline_empirical`` (NaN for metrics without a baseline); a window
        with fewer than 2 checkpoints has NaN values (a warning is logged) and its ``n_checkpoints``.
        ``dynamics_layer_curves`` / ``dynamics_layer_summary``: the same per layer, for per-layer metrics
        (only when one is registered). ``dynamics_replicates``: every single-value summary of every bootstrap
        replicate (empty without replicates), so runs sharing examples combine replicate by replicate.
        ``dynamics_lagged``: one row per (``lagged_pair`` metric, configured pair, unit), only when
        ``cfg.lagged_pairs`` is set.

    Raises:
        ValueError: No aggregates, a repeated step, or a window named ``all`` / ``mean``.
    """
    ordered = _ordered(aggregates)
    steps = np.array([a.step for a in ordered])  # [S]
    masks = _masks(cfg, steps)
    level = statistics.level if statistics else 0.95
    rows: dict[str, list[dict]] = {
        k: [] for k in ("curves", "summary", "layer_curves", "layer_summary", "replicates")
    }
    series = {
        unit: unit_series(ordered, kinds, masks, cfg.top_frac, statistics) for unit, kinds in UNITS.items()
    }
    for unit, one in series.items():
        for spec in metrics_for("pair"):
            rows["layer_curves" if spec.per_layer else "curves"] += _curve_rows(spec, unit, steps, one, level)
    for name, mask in masks.items():  # window-major, as the tables have always been ordered
        for unit, one in series.items():
            for metric, cells in one.windows[name].items():
                rows["layer_summary" if np.ndim(cells["value"]) else "summary"] += _summary_rows(
                    metric, unit, name, cells, int(mask.sum())
                )
            rows["replicates"] += _replicate_rows(unit, name, one.replicates)
    tables = _tables(rows)
    if cfg.lagged_pairs:
        tables["dynamics_lagged"] = lagged_overlaps(ordered, cfg.lagged_pairs, cfg.top_frac)
    return tables


def _curve_rows(
    spec: MetricSpec, unit: str, steps: np.ndarray, series: UnitSeries, level: float
) -> list[dict]:
    curve, baseline = series.curves[spec.name], series.baseline_curves[spec.name]  # [S-1] or [S-1, L]
    low = high = np.full(curve.shape, np.nan)
    if series.replicates is not None:
        low, high = percentile_interval(series.replicates.curves[spec.name], level)
    cells = dict(value=curve, ci_low=low, ci_high=high, baseline=baseline)
    if not spec.per_layer:
        return [
            dict(metric=spec.name, unit=unit, step=int(step), **{k: float(v[t]) for k, v in cells.items()})
            for t, step in enumerate(steps[1:])
        ]
    return [
        dict(
            metric=spec.name,
            unit=unit,
            layer=layer,
            step=int(step),
            **{k: float(v[t, layer]) for k, v in cells.items()},
        )
        for layer in range(curve.shape[1])
        for t, step in enumerate(steps[1:])
    ]


def _summary_rows(metric: str, unit: str, window: str, cells: dict, n: int) -> list[dict]:
    common = dict(metric=metric, unit=unit, window=window)
    if not np.ndim(cells["value"]):
        return [dict(common, n_checkpoints=n, **{k: float(v) for k, v in cells.items()})]
    return [
        dict(common, layer=i, n_checkpoints=n, **{k: float(np.asarray(v)[i]) for k, v in cells.items()})
        for i in range(len(cells["value"]))
    ]


def _replicate_rows(unit: str, window: str, replicates: ReplicateSeries | None) -> list[dict]:
    if replicates is None:
        return []
    return [
        dict(metric=metric, unit=unit, window=window, replicate=r, value=float(v))
        for metric, values in replicates.windows[window].items()
        if values.ndim == 1  # single-value metrics; per-layer replicates stay out of the table
        for r, v in enumerate(values)
    ]


def _tables(rows: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
    """The stage's validated tables; the per-layer ones only when a per-layer metric is registered."""
    schemas = {
        "curves": DynamicsCurve,
        "summary": DynamicsSummary,
        "layer_curves": DynamicsLayerCurve,
        "layer_summary": DynamicsLayerSummary,
        "replicates": DynamicsReplicates,
    }
    per_layer = bool(metrics_for("pair", per_layer=True))
    return {
        f"dynamics_{key}": schema.check(pd.DataFrame(rows[key], columns=list(schema.to_schema().columns)))
        for key, schema in schemas.items()
        if per_layer or not key.startswith("layer")
    }


def dynamics_metrics(tables: dict[str, pd.DataFrame]) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """The dynamics tables as MLflow metrics, named by :func:`metric_name`.

    Args:
        tables: From :func:`compute_dynamics`.

    Returns:
        ``(per_step, totals)``: ``per_step[step] = {"j_stab.ffn": ..., "r_t.attn": ...}`` (log each with
        ``step=step``) and ``totals = {"j_stab.ffn.mean": ..., "rho_avg.attn": ..., "r_t.ffn.early": ...}``.
        Values may be NaN (``Tracker.log_metrics`` skips them).
    """
    per_step: dict[int, dict[str, float]] = {}
    for row in tables["dynamics_curves"].itertuples(index=False):
        per_step.setdefault(int(row.step), {}).update(_with_extras(metric_name(row.metric, row.unit), row))
    layer_curves = tables.get("dynamics_layer_curves")
    for row in [] if layer_curves is None else layer_curves.itertuples(index=False):
        name = metric_name(row.metric, row.unit, layer=int(row.layer))
        per_step.setdefault(int(row.step), {})[name] = float(row.value)
    totals: dict[str, float] = {}
    for row in tables["dynamics_summary"].itertuples(index=False):
        totals.update(_with_extras(metric_name(row.metric, row.unit, row.window), row))
    if "dynamics_lagged" in tables:
        totals |= lagged_metrics(tables["dynamics_lagged"])
    return per_step, totals


def _with_extras(name: str, row) -> dict[str, float]:
    """``name`` -> value, and ``name.ci_low`` / ``.ci_high`` / ``.baseline`` where they are defined."""
    out = {name: float(row.value)}
    for extra in ("ci_low", "ci_high", "baseline"):
        value = float(getattr(row, extra, math.nan))
        if not math.isnan(value):
            out[f"{name}.{extra}"] = value
    return out
