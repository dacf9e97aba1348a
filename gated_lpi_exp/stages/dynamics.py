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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig
from gated_lpi_exp.metrics import MetricSpec, get_metric, metrics_for, window_mask
from gated_lpi_exp.schemas import (
    DataFrame,
    DynamicsCurve,
    DynamicsLayerCurve,
    DynamicsLayerSummary,
    DynamicsSummary,
    LayerProfile,
)
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


def _pair_curves(ordered: list[CheckpointAggregate], kind: str, top_frac: float) -> dict[str, np.ndarray]:
    """Every pair metric on the consecutive checkpoint pairs, two checkpoints in memory at a time:
    ``[S-1]`` each, ``[S-1, L]`` for per-layer metrics."""
    n_pairs, n_layers = len(ordered) - 1, ordered[0].scores(kind).shape[0]
    specs = metrics_for("pair")
    out = {s.name: np.full((n_pairs, n_layers) if s.per_layer else n_pairs, np.nan) for s in specs}
    for t in range(n_pairs):
        previous, current = ordered[t].scores(kind), ordered[t + 1].scores(kind)  # [L, N] each
        for spec in specs:
            out[spec.name][t] = spec.fn(previous, current, top_frac)
    return out


def _window_values(
    mask: np.ndarray, curves: dict[str, np.ndarray], profiles: np.ndarray
) -> dict[str, float | np.ndarray]:
    """Every metric over one window (NaN when it holds < 2 checkpoints); per-layer metrics give ``[L]``."""
    enough = int(mask.sum()) >= 2
    pairs = mask[:-1] & mask[1:]  # [S-1]: both checkpoints of the pair inside the window
    values: dict[str, float | np.ndarray] = {}
    for spec in metrics_for("pair"):
        curve = curves[spec.name][pairs]  # [n-1] or [n-1, L]
        if spec.per_layer:
            layers = range(curve.shape[1])
            values[spec.name] = np.array(
                [spec.aggregate(curve[:, i]) if enough else math.nan for i in layers]
            )
        else:
            values[spec.name] = spec.aggregate(curve) if enough else math.nan
    for spec in metrics_for("profile"):
        values[spec.name] = spec.fn(profiles[mask]) if enough else math.nan  # [n, L] in
    return values


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
    aggregates: Sequence[CheckpointAggregate], cfg: DynamicsConfig
) -> dict[str, pd.DataFrame]:
    """Curves and windowed summaries of every registered dynamics metric (paper Tables 2-3).

    Args:
        aggregates: One per checkpoint, any order (sorted by step here; steps must be distinct).
        cfg: ``top_frac`` of the top sets and the named step windows (start inclusive, stop exclusive).

    Returns:
        Tables by name. ``dynamics_curves``: one row per (pair metric, unit, consecutive pair), at the pair's
        later step. ``dynamics_summary``: one row per (metric, unit, window) for window ``all`` and each
        named window; a window with fewer than 2 checkpoints has NaN values (a warning is logged) and its
        ``n_checkpoints``. ``dynamics_layer_curves`` / ``dynamics_layer_summary``: the same per layer, for
        per-layer metrics (only when one is registered). ``dynamics_lagged``: one row per (``lagged_pair``
        metric, configured pair, unit), only when ``cfg.lagged_pairs`` is set.

    Raises:
        ValueError: No aggregates, a repeated step, or a window named ``all`` / ``mean``.
    """
    ordered = _ordered(aggregates)
    steps = np.array([a.step for a in ordered])  # [S]
    masks = _masks(cfg, steps)
    rows: dict[str, list[dict]] = {"curves": [], "summary": [], "layer_curves": [], "layer_summary": []}
    values = {}
    for unit, (kind, layer_kind) in UNITS.items():
        curves = _pair_curves(ordered, kind, cfg.top_frac)
        profiles = np.stack([a.scores(layer_kind) for a in ordered])  # [S, L]
        values[unit] = {name: _window_values(mask, curves, profiles) for name, mask in masks.items()}
        for spec in metrics_for("pair"):
            rows["layer_curves" if spec.per_layer else "curves"] += _curve_rows(spec, unit, steps, curves)
    for name, mask in masks.items():  # window-major, as the tables have always been ordered
        for unit in UNITS:
            for metric, value in values[unit][name].items():
                rows["layer_summary" if np.ndim(value) else "summary"] += _summary_rows(
                    metric, unit, name, value, int(mask.sum())
                )
    tables = _tables(rows)
    if cfg.lagged_pairs:
        tables["dynamics_lagged"] = lagged_overlaps(ordered, cfg.lagged_pairs, cfg.top_frac)
    return tables


def _curve_rows(spec: MetricSpec, unit: str, steps: np.ndarray, curves: dict[str, np.ndarray]) -> list[dict]:
    curve = curves[spec.name]  # [S-1] or [S-1, L]
    if not spec.per_layer:
        return [
            dict(metric=spec.name, unit=unit, step=int(step), value=float(value))
            for step, value in zip(steps[1:], curve, strict=True)
        ]
    return [
        dict(metric=spec.name, unit=unit, layer=layer, step=int(step), value=float(curve[t, layer]))
        for layer in range(curve.shape[1])
        for t, step in enumerate(steps[1:])
    ]


def _summary_rows(metric: str, unit: str, window: str, value, n: int) -> list[dict]:
    common = dict(metric=metric, unit=unit, window=window)
    if not np.ndim(value):
        return [dict(common, value=float(value), n_checkpoints=n)]
    return [dict(common, layer=i, value=float(v), n_checkpoints=n) for i, v in enumerate(value)]


def _tables(rows: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
    """The stage's validated tables; the per-layer ones only when a per-layer metric is registered."""
    schemas = {
        "curves": DynamicsCurve,
        "summary": DynamicsSummary,
        "layer_curves": DynamicsLayerCurve,
        "layer_summary": DynamicsLayerSummary,
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
        per_step.setdefault(int(row.step), {})[metric_name(row.metric, row.unit)] = float(row.value)
    layer_curves = tables.get("dynamics_layer_curves")
    for row in [] if layer_curves is None else layer_curves.itertuples(index=False):
        name = metric_name(row.metric, row.unit, layer=int(row.layer))
        per_step.setdefault(int(row.step), {})[name] = float(row.value)
    totals = {
        metric_name(row.metric, row.unit, row.window): float(row.value)
        for row in tables["dynamics_summary"].itertuples(index=False)
    }
    if "dynamics_lagged" in tables:
        totals |= lagged_metrics(tables["dynamics_lagged"])
    return per_step, totals
