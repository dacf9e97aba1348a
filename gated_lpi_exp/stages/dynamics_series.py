"""One unit type's dynamics with how sure each value is: the registered metrics on the mean scores, on every
bootstrap replicate (intervals) and through each metric's ``baseline`` hook (random-set baselines).

The dynamics stage (:mod:`gated_lpi_exp.stages.dynamics`) turns a :class:`UnitSeries` into its tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import StatisticsConfig
from gated_lpi_exp.metrics.bootstrap import percentile_interval
from gated_lpi_exp.metrics.series import (
    ReplicateSeries,
    baseline_value,
    pair_curves,
    point_value,
    replicate_series,
    window_values,
)


@dataclass
class UnitSeries:
    """Everything the tables show for one unit type: curves and window values, each with its extras."""

    curves: dict[str, np.ndarray]
    """Metric -> ``[S-1]`` (``[S-1, L]`` per layer)."""
    baseline_curves: dict[str, np.ndarray]
    """The same for the closed-form random-set baseline (NaN without one)."""
    windows: dict[str, dict[str, dict[str, float | np.ndarray]]]
    """Window -> metric -> column (value, ci_low, ci_high, baseline, baseline_empirical) -> value."""
    replicates: ReplicateSeries | None


def unit_series(
    ordered: list[CheckpointAggregate],
    kinds: tuple[str, str],
    masks: dict[str, np.ndarray],
    top_frac: float,
    stats: StatisticsConfig | None,
) -> UnitSeries:
    """Curves, window values, intervals and baselines of every registered dynamics metric for one unit type.

    Args:
        ordered: The checkpoints' aggregates in step order.
        kinds: ``(neuron score kind, layer score kind)`` of :class:`CheckpointAggregate`, e.g. ``("ffn",
            "ffn_layer")``.
        masks: Window name -> checkpoints inside it ``[S]``.
        top_frac: Share of the population in a top set.
        stats: Interval level and empirical baselines; None: closed-form baselines only, no intervals.
    """
    kind, layer_kind = kinds
    n, n_layers = len(ordered), ordered[0].scores(kind).shape[0]

    def scores(t: int) -> np.ndarray:
        return ordered[t].scores(kind)  # [L, N]

    curves = pair_curves(scores, n, n_layers, point_value(top_frac))
    expected = pair_curves(scores, n, n_layers, baseline_value(top_frac, 0, 0))
    empirical = (
        pair_curves(scores, n, n_layers, baseline_value(top_frac, stats.baseline_draws, stats.seed))
        if stats is not None
        else None
    )
    profiles = np.stack([a.scores(layer_kind) for a in ordered])  # [S, L]
    reps = _replicates(ordered, kind, layer_kind, masks, top_frac) if stats and stats.resamples else None
    windows: dict[str, dict[str, dict[str, float | np.ndarray]]] = {}
    for name, mask in masks.items():
        cols = {
            "value": window_values(mask, curves, profiles),
            "baseline": window_values(mask, expected, None),
            "baseline_empirical": window_values(mask, empirical, None) if empirical else {},
        }
        windows[name] = {}
        for metric, value in cols["value"].items():
            low = high = np.full(np.shape(value), np.nan)
            if reps is not None and stats is not None and mask.sum() >= 2:
                low, high = percentile_interval(reps.windows[name][metric], stats.level)
            nan = np.full(np.shape(value), np.nan)
            windows[name][metric] = {
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "baseline": cols["baseline"].get(metric, nan),
                "baseline_empirical": cols["baseline_empirical"].get(metric, nan),
            }
    return UnitSeries(curves, expected, windows, reps)


def _replicates(
    ordered: list[CheckpointAggregate], kind: str, layer_kind: str, masks: dict, top_frac: float
) -> ReplicateSeries | None:
    """Every bootstrap replicate's curves and window values, when every checkpoint carries replicates."""
    reps = [
        a.replicates for a in ordered if a.replicates and kind in a.replicates and layer_kind in a.replicates
    ]
    if len(reps) != len(ordered):
        return None
    layers = np.stack([r[layer_kind] for r in reps], axis=1).astype(np.float64)  # [R, S, L]
    return replicate_series([r[kind] for r in reps], layers, masks, top_frac)
