"""Layer-level dynamics over checkpoints: ρ_avg (paper eqs. 9-10) and σ_rel (paper eq. 11)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import as_float


def layer_consistency(layer_scores: Any) -> float:
    """Layer-distribution consistency ρ_avg (paper eqs. 9-10).

    Mean over checkpoint pairs ``i < j`` of the Pearson correlation between layer profiles ``I_i[·]`` and
    ``I_j[·]`` (population moments as in eq. 10; the 1/L factors cancel).

    A constant profile (all layers equal, e.g. a model with one layer) has zero variance, so every pair
    containing it has an undefined correlation: such pairs are skipped rather than counted as 0. If no pair
    is defined the result is NaN.

    Args:
        layer_scores: Layer profile per checkpoint, shape ``[S, L]``.

    Returns:
        ρ_avg in [-1, 1], or NaN.

    Raises:
        ValueError: ``S < 2`` (no pair) or ``L < 1``, or non-finite scores.
    """
    x = as_float(layer_scores, "layer_scores", 2)  # [S, L]
    n_steps, n_layers = x.shape
    if n_steps < 2 or n_layers < 1:
        raise ValueError(f"layer_consistency needs >= 2 checkpoints and >= 1 layer, got shape {x.shape}")
    centred = x - x.mean(axis=1, keepdims=True)  # [S, L]
    norm = np.linalg.norm(centred, axis=1)  # [S]
    # Exact test on the raw row: rounding in the mean can leave a constant row with a tiny nonzero norm.
    constant = np.ptp(x, axis=1) == 0  # [S]
    iu, ju = np.triu_indices(n_steps, k=1)
    keep = ~(constant[iu] | constant[ju])
    if not keep.any():
        return float("nan")
    iu, ju = iu[keep], ju[keep]
    corr = np.einsum("pl,pl->p", centred[iu], centred[ju]) / (norm[iu] * norm[ju])  # [pairs]
    return float(np.clip(corr, -1.0, 1.0).mean())


def cross_step_cv(layer_scores: Any) -> float:
    """Cross-step coefficient of variation σ_rel (paper eq. 11).

    Mean over layers of ``σ_l / |μ_l|``, where ``μ_l`` and ``σ_l`` are the mean and POPULATION std
    (ddof=0, as in eq. 11) of layer ``l`` over checkpoints. A layer with ``μ_l == 0`` (exactly) has no
    relative variation and is skipped; if every layer is skipped the result is NaN.

    Args:
        layer_scores: Layer profile per checkpoint, shape ``[S, L]``.

    Returns:
        σ_rel >= 0, or NaN.

    Raises:
        ValueError: Empty or non-finite input.
    """
    x = as_float(layer_scores, "layer_scores", 2)  # [S, L]
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"cross_step_cv needs >= 1 checkpoint and >= 1 layer, got shape {x.shape}")
    mu = x.mean(axis=0)  # [L]
    sigma = x.std(axis=0, ddof=0)  # [L]
    keep = mu != 0
    if not keep.any():
        return float("nan")
    return float((sigma[keep] / np.abs(mu[keep])).mean())
