"""Bootstrap intervals over examples, Poisson variant (pure numpy).

Every example gets an independent Poisson(1) weight in each of R replicates; a replicate's value of a metric
is the metric recomputed end to end from the weighted example set (a weight of 2 counts the example twice,
0 leaves it out). This is the Poisson approximation of resampling ``n`` examples with replacement: the
weights of one replicate sum to ``n`` only on average, and a replicate's means divide by its own weight total.
Its advantage is that a replicate is a *sum* over examples, so it can be accumulated on the fly in a single
pass (memory ``R x population``) and any subset of examples (a relation, a category) has its replicates
inside the same weights.

An example's weights are a pure function of ``(seed, relation, sample_id)``, never of its position in a
table: the same example gets the same weights in every stage (evaluation, attribution, ablation), every
checkpoint and every run, so differences between checkpoints or conditions are paired, and two runs over
different models (seeds of a suite) resample the same examples in replicate ``r``.

Interval: the percentile interval of the replicate values (``level`` = 0.95 gives the 2.5th and 97.5th
percentiles), skipping replicates where the metric is undefined (NaN).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import _to_numpy

METHOD = "poisson_bootstrap"
"""Name of the method, logged with every interval."""
MIN_DEFINED_SHARE = 0.5
"""An interval needs at least this share of its replicates defined (finite); else it is NaN."""


def example_weights(
    relations: Sequence[str], sample_ids: Sequence[int], resamples: int, seed: int = 0
) -> np.ndarray:
    """Poisson(1) weight of every example in every replicate # [resamples, n]

    Args:
        relations: Relation name of each example.
        sample_ids: Sample id of each example (unique within its relation).
        resamples: Number of replicates R (>= 1).
        seed: Seed of the whole bootstrap; with it, an example's weights depend only on its identity.

    Raises:
        ValueError: ``resamples < 1`` or the two sequences differ in length.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if len(relations) != len(sample_ids):
        raise ValueError(f"{len(relations)} relations but {len(sample_ids)} sample ids")
    crcs: dict[str, int] = {}
    out = np.empty((resamples, len(relations)), dtype=np.float64)  # [R, n]
    for i, (relation, sample_id) in enumerate(zip(relations, sample_ids, strict=True)):
        crc = crcs.setdefault(relation, zlib.crc32(str(relation).encode()))
        out[:, i] = np.random.default_rng([int(seed), crc, int(sample_id)]).poisson(1.0, resamples)
    return out


def weighted_means(values: Any, weights: np.ndarray) -> np.ndarray:
    """Each replicate's weighted mean of per-example values # [R, ...]

    Args:
        values: Per-example values, shape ``[n, ...]`` (e.g. 0/1 hits, scores).
        weights: From :func:`example_weights`, shape ``[R, n]``.

    Returns:
        ``Σ_i w_ri v_i / Σ_i w_ri`` per replicate; NaN for a replicate whose weights sum to 0.
    """
    v = np.asarray(_to_numpy(values), dtype=np.float64)
    if v.shape[0] != weights.shape[1]:
        raise ValueError(f"values hold {v.shape[0]} examples but weights {weights.shape[1]}")
    total = weights.sum(axis=1)  # [R]
    sums = weights @ v.reshape(v.shape[0], -1)  # [R, prod(...)]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(total[:, None] > 0, sums / total[:, None], np.nan)
    return means.reshape((weights.shape[0], *v.shape[1:]))


def percentile_interval(replicates: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of replicate values along the first axis.

    Args:
        replicates: Shape ``[R, ...]``; NaN marks a replicate where the metric is undefined.
        level: Coverage in (0, 1).

    Returns:
        ``(low, high)``, each of shape ``[...]`` (0-d arrays for a 1-D input); NaN where fewer than
        :data:`MIN_DEFINED_SHARE` of the replicates are defined.

    Raises:
        ValueError: ``level`` outside (0, 1) or no replicates.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(_to_numpy(replicates), dtype=np.float64)
    if r.ndim == 0 or r.shape[0] == 0:
        raise ValueError("percentile_interval needs at least one replicate")
    flat = r.reshape(r.shape[0], -1)  # [R, m]
    defined = np.isfinite(flat)
    enough = defined.sum(axis=0) >= MIN_DEFINED_SHARE * flat.shape[0]  # [m]
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    tail = 100.0 * (1.0 - level) / 2.0
    if enough.any():
        cols = flat[:, enough]
        with np.errstate(invalid="ignore"):
            low[enough] = np.nanpercentile(np.where(np.isfinite(cols), cols, np.nan), tail, axis=0)
            high[enough] = np.nanpercentile(np.where(np.isfinite(cols), cols, np.nan), 100.0 - tail, axis=0)
    return low.reshape(r.shape[1:]), high.reshape(r.shape[1:])


def mean_interval(values: Any, weights: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-example values (e.g. HIT@k from 0/1 hits).

    Args:
        values: Per-example values ``[n]``.
        weights: ``[R, n]`` from :func:`example_weights` for the same examples, in the same order.
        level: Coverage.
    """
    low, high = percentile_interval(weighted_means(values, weights), level)
    return float(low), float(high)


def drop_percent_replicates(base: Any, ablated: Any, weights: np.ndarray) -> np.ndarray:
    """Replicates of ``100 · (HIT_base − HIT_ablated) / HIT_base`` from paired per-example hits # [R]

    Args:
        base: Per-example 0/1 hits without the ablation ``[n]``.
        ablated: The same examples' hits with it ``[n]``.
        weights: ``[R, n]`` for those examples: both scores of a replicate use the same resample.

    Returns:
        NaN in a replicate whose base HIT is 0 (or whose weights sum to 0).
    """
    b = weighted_means(base, weights)  # [R]
    a = weighted_means(ablated, weights)  # [R]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, 100.0 * (b - a) / b, np.nan)
