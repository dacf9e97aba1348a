"""The registered dynamics metrics of one series of checkpoints as plain arrays: curves, windows, replicates.

Which metrics are computed comes from the registry: every metric with input ``pair`` on each consecutive pair
of checkpoints (a curve), every metric with input ``profile`` on each window's layer profiles. The dynamics
stage runs the same functions on the mean scores (the reported values), on every bootstrap replicate of them
(the intervals: a replicate's value is the metric recomputed end to end) and, through each metric's
``baseline`` hook, on random unit sets of the same size (the baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from gated_lpi_exp.metrics.registry import MetricSpec, metrics_for

PairFn = Callable[[MetricSpec, np.ndarray, np.ndarray], float | np.ndarray]
"""What is computed on one consecutive pair for one pair metric: ``(spec, previous, current) -> value``."""


def pair_curves(
    scores: Callable[[int], np.ndarray], n_checkpoints: int, n_layers: int, evaluate: PairFn
) -> dict[str, np.ndarray]:
    """Every pair metric on the consecutive checkpoint pairs, two checkpoints in memory at a time.

    Args:
        scores: Checkpoint index (step order) -> its scores ``[L, N]``; called twice per pair, so it may load
            lazily.
        n_checkpoints: S.
        n_layers: L.
        evaluate: The value of one metric on one pair (the metric, its baseline, ...); specs it gives NaN for
            stay NaN.

    Returns:
        Metric -> ``[S-1]``, or ``[S-1, L]`` for per-layer metrics.
    """
    specs = metrics_for("pair")
    n_pairs = n_checkpoints - 1
    out = {s.name: np.full((n_pairs, n_layers) if s.per_layer else n_pairs, np.nan) for s in specs}
    for t in range(n_pairs):
        previous, current = scores(t), scores(t + 1)  # [L, N] each
        for spec in specs:
            out[spec.name][t] = evaluate(spec, previous, current)
    return out


def point_value(top_frac: float) -> PairFn:
    """The metric itself."""
    return lambda spec, previous, current: spec.fn(previous, current, top_frac)


def baseline_value(top_frac: float, draws: int, seed: int) -> PairFn:
    """The metric's random-set baseline (closed form with ``draws=0``); NaN for metrics without one."""

    def evaluate(spec: MetricSpec, previous: np.ndarray, current: np.ndarray) -> float | np.ndarray:
        if spec.baseline is None:
            return math.nan
        return spec.baseline(previous, current, top_frac, draws=draws, seed=seed)

    return evaluate


def window_values(
    mask: np.ndarray, curves: dict[str, np.ndarray], profiles: np.ndarray | None
) -> dict[str, float | np.ndarray]:
    """Every metric over one window (NaN when it holds < 2 checkpoints); per-layer metrics give ``[L]``.

    Args:
        mask: Checkpoints inside the window ``[S]`` (a contiguous run of the step-sorted series).
        curves: From :func:`pair_curves`.
        profiles: Layer profile per checkpoint ``[S, L]``; None leaves the profile metrics out (baselines).
    """
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
    if profiles is not None:
        for spec in metrics_for("profile"):
            values[spec.name] = spec.fn(profiles[mask]) if enough else math.nan  # [n, L] in
    return values


@dataclass
class ReplicateSeries:
    """Every bootstrap replicate's curves and window values of one unit type."""

    curves: dict[str, np.ndarray]
    """Metric -> ``[R, S - 1]`` (``[R, S - 1, L]`` per layer)."""
    windows: dict[str, dict[str, np.ndarray]]
    """Window -> metric -> ``[R]`` (``[R, L]`` per layer); NaN in a replicate whose scores are not all finite."""


def replicate_series(
    neurons: Sequence[np.ndarray], layers: np.ndarray, masks: dict[str, np.ndarray], top_frac: float
) -> ReplicateSeries:
    """The metrics of every bootstrap replicate, recomputed end to end from its mean scores.

    Args:
        neurons: Per checkpoint in step order, the replicates of the neuron scores ``[R, L, N]``.
        layers: Replicates of the layer profiles ``[R, S, L]``.
        masks: Window name -> checkpoints inside it ``[S]``.
        top_frac: Share of the population in a top set.
    """
    n_reps, n_steps, n_layers = layers.shape
    finite = np.isfinite(layers).all(axis=(1, 2)) & np.all(
        [np.isfinite(x.reshape(n_reps, -1)).all(axis=1) for x in neurons], axis=0
    )  # [R]
    per_rep_curves, per_rep_windows = [], []
    for r in range(n_reps):
        if finite[r]:
            curves = pair_curves(partial(_replicate, neurons, r), n_steps, n_layers, point_value(top_frac))
            windows = {name: window_values(mask, curves, layers[r]) for name, mask in masks.items()}
        else:  # undefined replicate: NaN everywhere (the metrics reject non-finite scores)
            curves = pair_curves(lambda t: neurons[t][0], n_steps, n_layers, lambda *_: math.nan)
            template = np.ones(layers.shape[1:])  # [S, L], only gives the shapes of the values
            windows = {name: _all_nan(window_values(mask, curves, template)) for name, mask in masks.items()}
        per_rep_curves.append(curves)
        per_rep_windows.append(windows)
    names = list(per_rep_curves[0])
    return ReplicateSeries(
        curves={m: np.stack([c[m] for c in per_rep_curves]) for m in names},
        windows={
            w: {
                m: np.stack([np.asarray(v[w][m], dtype=np.float64) for v in per_rep_windows])
                for m in per_rep_windows[0][w]
            }
            for w in masks
        },
    )


def _replicate(neurons: Sequence[np.ndarray], r: int, t: int) -> np.ndarray:
    """Replicate ``r`` of checkpoint ``t``'s neuron scores ``[L, N]``."""
    return neurons[t][r]


def _all_nan(values: dict[str, float | np.ndarray]) -> dict[str, float | np.ndarray]:
    return {m: np.full(np.shape(v), np.nan) if np.ndim(v) else math.nan for m, v in values.items()}
