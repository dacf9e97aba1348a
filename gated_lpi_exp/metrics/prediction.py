"""Prediction-level metrics: HIT@k (paper eq. 6) and the ablation drop % (docs/definitions.md, "Ablations")."""

from __future__ import annotations

from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import _to_numpy, as_int


def gold_ranks(logits: Any, targets: Any) -> np.ndarray:
    """Competition rank of each row's target token among its logits: ``1 + #{v : logit_v > logit_target}``.

    Tokens tied with the target never push it down (the optimistic convention), so with all logits equal
    every target has rank 1. ``-inf`` logits (masked tokens) are allowed; NaN logits are not.

    Args:
        logits: Next-token logits, shape ``[B, V]`` (numpy or torch, any float dtype).
        targets: Target token ids, shape ``[B]``.

    Returns:
        int64 ranks >= 1, shape ``[B]``.

    Raises:
        ValueError: Bad shapes, empty batch, NaN logits or out-of-range targets.
    """
    x = np.asarray(_to_numpy(logits), dtype=np.float64)  # [B, V]
    y = as_int(targets, "targets", 1)  # [B]
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be [B, V] and targets [B]; got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("gold_ranks needs at least one example")
    if np.isnan(x).any():
        raise ValueError("logits contain NaN")
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"targets must lie in [0, {x.shape[1]}), got range [{y.min()}, {y.max()}]")
    target_logit = np.take_along_axis(x, y[:, None], axis=1)  # [B, 1]
    return (x > target_logit).sum(axis=1).astype(np.int64) + 1  # [B]


def hit_rate(ranks: Any, k: int) -> float:
    """HIT@k (paper eq. 6) from the targets' ranks: the share of examples ranked ``<= k``.

    Args:
        ranks: Competition ranks of the targets (:func:`gold_ranks`), shape ``[B]``, each >= 1.
        k: Cut-off, >= 1.

    Returns:
        Share of hits in [0, 1].

    Raises:
        ValueError: Empty or non-integral ranks, a rank below 1, or ``k < 1``.
    """
    r = as_int(ranks, "ranks", 1)  # [B]
    if r.size == 0:
        raise ValueError("HIT@k needs at least one example")
    if r.min() < 1:
        raise ValueError(f"ranks start at 1, got {r.min()}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return float(np.mean(r <= k))


def hit_at_k(logits: Any, targets: Any, k: int) -> float:
    """HIT@k (paper eq. 6) from logits: :func:`hit_rate` of :func:`gold_ranks`.

    A row is a hit when FEWER THAN ``k`` logits are STRICTLY greater than the target's logit; e.g. if all
    logits are equal every row is a hit at k=1.

    Args:
        logits: Next-token logits, shape ``[B, V]``.
        targets: Target token ids, shape ``[B]``.
        k: Cut-off, >= 1.

    Returns:
        Share of hits in [0, 1].

    Raises:
        ValueError: Bad shapes, empty batch, NaN logits, out-of-range targets or ``k < 1``.
    """
    return hit_rate(gold_ranks(logits, targets), k)


MIN_BASE_HIT10 = 0.5
"""Near chance a drop divides by almost nothing (0.01 -> 0.03 is -200%), so drops count only at checkpoints
whose unablated HIT@10 is at least this: the logged ``ablation.drop.*`` metrics (NaN below it), the console's
drops, and the report's filtered Table 4 rows (the default of ``--min-base-hit10``; its first rows, as in the
paper, average every checkpoint)."""


def drop_percent(base: float, ablated: float) -> float:
    """Relative drop of a score under ablation: ``100 · (base - ablated) / base``.

    Positive means the ablation hurt (the units matter causally); negative means it helped. NaN when
    ``base == 0`` (no baseline to lose) and whenever an input is NaN.

    Args:
        base: Score without ablation (e.g. HIT@10).
        ablated: Score with the units ablated.

    Returns:
        Drop in percent.
    """
    base, ablated = float(base), float(ablated)
    if base == 0.0:
        return float("nan")
    return 100.0 * (base - ablated) / base
