"""Prediction-level metrics: HIT@k (paper eq. 6) and the ablation drop % (docs/definitions.md, "Ablations")."""

from __future__ import annotations

from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import _to_numpy, as_int


def hit_at_k(logits: Any, targets: Any, k: int) -> float:
    """HIT@k (paper eq. 6): share of rows whose target token is among the top-k logits.

    Ties: a row is a hit when FEWER THAN ``k`` logits are STRICTLY greater than the target's logit, i.e. the
    target's competition rank ``1 + #{v : logit_v > logit_target}`` is <= k. Tokens tied with the target
    therefore never push it out (the optimistic convention); e.g. if all logits are equal every row is a
    hit at k=1. ``-inf`` logits (masked tokens) are allowed; NaN logits are not.

    Args:
        logits: Next-token logits, shape ``[B, V]``.
        targets: Target token ids, shape ``[B]``.
        k: Cut-off, >= 1.

    Returns:
        Share of hits in [0, 1].

    Raises:
        ValueError: Bad shapes, empty batch, NaN logits, out-of-range targets or ``k < 1``.
    """
    x = np.asarray(_to_numpy(logits), dtype=np.float64)  # [B, V]
    y = as_int(targets, "targets", 1)  # [B]
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be [B, V] and targets [B]; got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("hit_at_k needs at least one example")
    if np.isnan(x).any():
        raise ValueError("logits contain NaN")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"targets must lie in [0, {x.shape[1]}), got range [{y.min()}, {y.max()}]")
    target_logit = np.take_along_axis(x, y[:, None], axis=1)  # [B, 1]
    n_greater = (x > target_logit).sum(axis=1)  # [B]
    return float((n_greater < k).mean())


MIN_BASE_HIT10 = 0.5
"""A drop is shown (MLflow metrics, the report's Table 4) only at checkpoints whose unablated HIT@10 is at
least this: near chance a drop divides by almost nothing (0.01 -> 0.03 is -200%)."""


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
