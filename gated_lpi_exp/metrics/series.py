"""The dynamics metrics of one series of checkpoints as plain arrays: pair curves and window summaries.

The dynamics stage runs the same two functions on the mean scores (the reported values) and on every
bootstrap replicate of them (the intervals), so a replicate's value is the metric recomputed end to end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gated_lpi_exp.metrics._arrays import top_count
from gated_lpi_exp.metrics.baselines import (
    empirical_random_gain_share,
    empirical_random_jaccard,
    expected_random_gain_share,
    expected_random_jaccard,
)
from gated_lpi_exp.metrics.layers import cross_step_cv, layer_consistency
from gated_lpi_exp.metrics.neurons import (
    jaccard_stability,
    pooled_gain_concentration,
    positive_gain_concentration,
)
from gated_lpi_exp.metrics.registry import get_metric

CURVE_METRICS = ("j_stab", "r_t", "r_t_pop")
"""Metrics with a value per consecutive checkpoint pair; their summary is the registry's aggregation."""
PROFILE_METRICS = ("rho_avg", "sigma_rel")
"""Metrics with one value per window, computed on the layer profiles."""
SET_METRICS = CURVE_METRICS
"""Metrics of top unit sets, which have a random-set baseline."""


def pair_values(previous: np.ndarray, current: np.ndarray, top_frac: float) -> dict[str, float]:
    """Every curve metric of one consecutive checkpoint pair.

    Args:
        previous: Scores at checkpoint ``t`` ``[L, N]``.
        current: Scores at checkpoint ``t + 1`` ``[L, N]``.
        top_frac: Share of the population (J_stab, pooled R_t) or of each layer (R_t) in a top set.
    """
    pair = np.stack([previous, current])  # [2, L, N]
    return {
        "j_stab": float(jaccard_stability(pair, top_frac)[1][0]),
        "r_t": float(positive_gain_concentration(pair, top_frac)[0]),
        "r_t_pop": float(pooled_gain_concentration(pair, top_frac)[0]),
    }


def window_summary(curves: dict[str, np.ndarray], profiles: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every metric over one window of a series (NaN everywhere when it holds fewer than 2 checkpoints).

    Args:
        curves: Metric -> values of the consecutive pairs ``[S - 1]``.
        profiles: Layer profile per checkpoint ``[S, L]``.
        mask: Checkpoints inside the window ``[S]`` (a contiguous run of the step-sorted series).
    """
    values = dict.fromkeys(CURVE_METRICS + PROFILE_METRICS, math.nan)
    if int(mask.sum()) < 2:
        return values
    pairs = mask[:-1] & mask[1:]  # [S-1]: both checkpoints of the pair inside the window
    for metric in CURVE_METRICS:
        values[metric] = get_metric(metric).aggregate(curves[metric][pairs])
    inside = profiles[mask]  # [n, L]
    values["rho_avg"] = layer_consistency(inside) if inside.shape[1] >= 2 else math.nan
    values["sigma_rel"] = cross_step_cv(inside)
    return values


@dataclass
class ReplicateSeries:
    """Every bootstrap replicate's curves and window summaries of one unit type."""

    curves: dict[str, np.ndarray]
    """Metric -> ``[R, S - 1]``."""
    windows: dict[str, dict[str, np.ndarray]]
    """Window -> metric -> ``[R]`` (NaN in a replicate whose scores are not all finite)."""


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
    n_reps, n_steps = layers.shape[0], layers.shape[1]
    finite = np.isfinite(layers).all(axis=(1, 2)) & np.all(
        [np.isfinite(x.reshape(n_reps, -1)).all(axis=1) for x in neurons], axis=0
    )  # [R]
    curves = {m: np.full((n_reps, n_steps - 1), np.nan) for m in CURVE_METRICS}
    for t in range(n_steps - 1):
        for r in np.flatnonzero(finite):
            for metric, value in pair_values(neurons[t][r], neurons[t + 1][r], top_frac).items():
                curves[metric][r, t] = value
    windows = {}
    for name, mask in masks.items():
        per_rep = [
            window_summary({m: c[r] for m, c in curves.items()}, layers[r], mask)
            if finite[r]
            else dict.fromkeys(CURVE_METRICS + PROFILE_METRICS, math.nan)
            for r in range(n_reps)
        ]
        windows[name] = {m: np.array([v[m] for v in per_rep]) for m in CURVE_METRICS + PROFILE_METRICS}
    return ReplicateSeries(curves, windows)


@dataclass
class SetBaselines:
    """Random-set baselines of the set metrics of one unit type."""

    expected: dict[str, float]
    """Metric -> closed-form expectation (the same for every pair and window)."""
    empirical: dict[str, dict[str, float]]
    """Window -> metric -> mean over seeded random sets (NaN where the window has < 2 checkpoints)."""


def set_baselines(
    scores: Sequence[np.ndarray], masks: dict[str, np.ndarray], top_frac: float, draws: int, seed: int
) -> SetBaselines:
    """Closed-form and seeded empirical random-set baselines of J_stab, R_t and pooled R_t.

    Args:
        scores: Per checkpoint in step order, the mean scores ``[L, N]``.
        masks: Window name -> checkpoints inside it ``[S]``.
        top_frac: Share of the population (J_stab, pooled R_t) or of each layer (R_t) in a set.
        draws: Random sets per value.
        seed: Seed of the draws.
    """
    n_layers, width = scores[0].shape
    population = n_layers * width
    expected = {
        "j_stab": expected_random_jaccard(population, top_count(population, top_frac)),
        "r_t": expected_random_gain_share(width, top_frac),
        "r_t_pop": expected_random_gain_share(population, top_frac),
    }
    jaccard = float(empirical_random_jaccard(population, top_count(population, top_frac), draws, seed).mean())
    gains = {"r_t": np.full(len(scores) - 1, np.nan), "r_t_pop": np.full(len(scores) - 1, np.nan)}
    for t in range(len(scores) - 1):
        pair = np.stack([scores[t], scores[t + 1]])  # [2, L, N]
        gains["r_t"][t] = empirical_random_gain_share(pair, top_frac, draws, seed=seed + t)[0]
        pooled = pair.reshape(2, 1, population)
        gains["r_t_pop"][t] = empirical_random_gain_share(pooled, top_frac, draws, seed=seed + t)[0]
    empirical = {}
    for name, mask in masks.items():
        pairs = mask[:-1] & mask[1:]
        empirical[name] = dict.fromkeys(SET_METRICS, math.nan)
        if mask.sum() >= 2:
            empirical[name] = {"j_stab": jaccard} | {
                m: get_metric(m).aggregate(curve[pairs]) for m, curve in gains.items()
            }
    return SetBaselines(expected, empirical)
