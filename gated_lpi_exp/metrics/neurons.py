"""Neuron-level dynamics: top-|I| sets ("Top set" in docs/definitions.md), J_stab (paper eq. 7) and R_t (paper eq. 8)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import as_float, top_count


def _top_indices(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of a 1-D array, in rank order, ties to the lower index."""
    n = magnitude.shape[0]
    # O(N) selection instead of a full sort: the population is ~1M neurons for OLMoE and S is ~250.
    kth = np.partition(magnitude, n - k)[n - k]
    above = np.flatnonzero(magnitude > kth)
    tied = np.flatnonzero(magnitude == kth)[: k - above.size]
    chosen = np.concatenate([above, tied])
    # lexsort's last key is primary: by descending magnitude, then ascending index.
    return chosen[np.lexsort((chosen, -magnitude[chosen]))]


def top_set(scores: Any, top_frac: float = 0.01) -> np.ndarray:
    """The ``ceil(top_frac · N)`` neurons with the largest ``|score|``.

    Args:
        scores: Importance scores, shape ``[N]``.
        top_frac: Share of the population to keep, in (0, 1].

    Returns:
        int64 indices, shape ``[k]``, in rank order (largest ``|score|`` first). Ties are broken by the LOWER
        index first, so the set is deterministic.

    Raises:
        ValueError: Empty or non-finite ``scores``, or ``top_frac`` outside (0, 1].
    """
    s = as_float(scores, "scores", 1)  # [N]
    return _top_indices(np.abs(s), top_count(s.shape[0], top_frac))


def _jaccard(top_a: np.ndarray, top_b: np.ndarray, k: int) -> float:
    """Jaccard overlap of two top sets of ``k`` members each."""
    inter = np.intersect1d(top_a, top_b, assume_unique=True).size
    return inter / (2 * k - inter)  # both sets have k members, so |union| = 2k - |inter|


def jaccard_stability(scores: Any, top_frac: float = 0.01) -> tuple[float, np.ndarray]:
    """Top-set stability J_stab (paper eq. 7): Jaccard overlap of consecutive checkpoints' top sets.

    ``J_t = |Top_t ∩ Top_{t+1}| / |Top_t ∪ Top_{t+1}|`` with ``Top_t = top_set(scores[t], top_frac)``.

    Args:
        scores: Importance per checkpoint, shape ``[S, N]``; rows in training-step order. Extra trailing dims
            (e.g. ``[S, L, N]``) are flattened into one population of neurons, as the population is
            every neuron of a type in every layer.
        top_frac: Share of the population in each top set.

    Returns:
        ``(mean, curve)``: ``curve[t]`` is ``J`` between rows ``t`` and ``t + 1`` (shape ``[S - 1]``);
        ``mean`` is its mean (J_stab).

    Raises:
        ValueError: Fewer than 2 checkpoints, or invalid scores / top_frac.
    """
    s = as_float(scores, "scores", (2, 3, 4))
    if s.shape[0] < 2:
        raise ValueError(f"jaccard_stability needs at least 2 checkpoints (rows), got {s.shape[0]}")
    s = s.reshape(s.shape[0], -1)  # [S, N]
    k = top_count(s.shape[1], top_frac)
    # Row by row so only one extra [N] buffer exists (S x ~1M float64 is already GBs for OLMoE).
    tops = [_top_indices(np.abs(row), k) for row in s]
    curve = np.array([_jaccard(tops[t], tops[t + 1], k) for t in range(len(tops) - 1)])  # [S-1]
    return float(curve.mean()), curve


def top_set_overlap(scores_a: Any, scores_b: Any, top_frac: float = 0.01) -> float:
    """Jaccard overlap of the top sets of two checkpoints: one value J_t of the J_stab curve (paper eq. 7).

    ``|Top_a ∩ Top_b| / |Top_a ∪ Top_b|`` with ``Top = top_set(scores, top_frac)`` over the flattened
    population; for consecutive checkpoints this is ``jaccard_stability(...)[1][t]``.

    Args:
        scores_a: Importance at the earlier checkpoint, e.g. ``[L, N]`` (flattened into one population).
        scores_b: Importance at the later checkpoint, same size.
        top_frac: Share of the population in each top set.

    Raises:
        ValueError: The sizes differ, or invalid scores / top_frac.
    """
    a = as_float(scores_a, "scores_a", (1, 2, 3)).ravel()
    b = as_float(scores_b, "scores_b", (1, 2, 3)).ravel()
    if a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must have the same size, got {a.size} and {b.size}")
    k = top_count(a.size, top_frac)
    return _jaccard(_top_indices(np.abs(a), k), _top_indices(np.abs(b), k), k)


def positive_gain_concentration(scores: Any, top_frac: float = 0.01) -> np.ndarray:
    """Positive-gain concentration R_t (paper eq. 8), per layer then averaged over layers.

    For checkpoint ``t >= 1`` (0-based) and each layer: ``Δ⁺_i = max(0, |I_{i,t}| - |I_{i,t-1}|)``;
    ``R = Σ_{top} Δ⁺ / Σ_{all} Δ⁺`` where *top* is the ``ceil(top_frac · N)`` neurons with largest ``Δ⁺``
    (which tied neurons are chosen cannot change the sum). A layer with no positive gain (denominator 0)
    gives NaN and is left out of the layer average; the step is NaN when every layer is.

    Args:
        scores: Importance per checkpoint, shape ``[S, L, N]`` (L layers of N neurons) or ``[S, N]`` (one
            layer); rows in training-step order.
        top_frac: Share of each layer's neurons counted as the top.

    Returns:
        float64 curve, shape ``[S - 1]``; entry ``t - 1`` is R at checkpoint ``t``.

    Raises:
        ValueError: Fewer than 2 checkpoints, or invalid scores / top_frac.
    """
    per_layer = _gain_shares(scores, top_frac)  # [S-1, L]
    valid = ~np.isnan(per_layer)
    counts = valid.sum(axis=-1)  # [S-1]
    # Explicit sum/count rather than np.nanmean, which warns on all-NaN steps.
    sums = np.where(valid, per_layer, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def gain_concentration(scores_a: Any, scores_b: Any, top_frac: float = 0.01) -> float:
    """R_t (paper eq. 8) of one pair of checkpoints: ``positive_gain_concentration`` of the two, one value.

    Args:
        scores_a: Importance at the earlier checkpoint, ``[L, N]`` (or ``[N]``: one layer).
        scores_b: Importance at the later checkpoint, same shape.
        top_frac: Share of each layer's neurons counted as the top.

    Raises:
        ValueError: The shapes differ, or invalid scores / top_frac.
    """
    return float(positive_gain_concentration(_pair(scores_a, scores_b), top_frac)[0])


def gain_concentration_by_layer(scores_a: Any, scores_b: Any, top_frac: float = 0.01) -> np.ndarray:
    """R_t (paper eq. 8) of one pair of checkpoints, layer by layer, before the average over layers.

    Args:
        scores_a: Importance at the earlier checkpoint, ``[L, N]`` (or ``[N]``: one layer).
        scores_b: Importance at the later checkpoint, same shape.
        top_frac: Share of each layer's neurons counted as the top.

    Returns:
        float64, shape ``[L]``: each layer's share of its positive gain taken by its top gainers; NaN for a
        layer without positive gain. Their mean over the defined layers is :func:`gain_concentration`.

    Raises:
        ValueError: The shapes differ, or invalid scores / top_frac.
    """
    return _gain_shares(_pair(scores_a, scores_b), top_frac)[0]


def _pair(scores_a: Any, scores_b: Any) -> np.ndarray:
    """Two checkpoints' scores stacked as a series: ``[2, L, N]`` (or ``[2, N]``)."""
    a, b = as_float(scores_a, "scores_a", (1, 2)), as_float(scores_b, "scores_b", (1, 2))
    if a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must have the same shape, got {a.shape} and {b.shape}")
    return np.stack([a, b])


def _gain_shares(scores: Any, top_frac: float) -> np.ndarray:
    """Each layer's share of positive gain taken by its top gainers (NaN without gain): ``[S - 1, L]``."""
    s = as_float(scores, "scores", (2, 3))
    if s.ndim == 2:
        s = s[:, None, :]  # [S, 1, N]
    if s.shape[0] < 2:
        raise ValueError(f"positive_gain_concentration needs at least 2 checkpoints (rows), got {s.shape[0]}")
    n = s.shape[2]
    k = top_count(n, top_frac)
    mag = np.abs(s)
    gain = np.maximum(0.0, mag[1:] - mag[:-1])  # [S-1, L, N]
    top_sum = np.partition(gain, n - k, axis=-1)[..., n - k :].sum(axis=-1)  # [S-1, L]
    total = gain.sum(axis=-1)  # [S-1, L]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top_sum / total, np.nan)  # [S-1, L]


def pooled_gain_concentration(scores_a: Any, scores_b: Any, top_frac: float = 0.01) -> float:
    """R_t over the whole population of one pair of checkpoints: one top set of ``ceil(top_frac · L · N)``
    gainers across all layers.

    The same eq. 8 as :func:`gain_concentration` with every layer's neurons pooled, so the top set is as
    large as J_stab's; the per-layer form takes ``ceil(top_frac · N)`` per layer, which is only a handful of
    neurons in a small model.

    Args:
        scores_a: Importance at the earlier checkpoint, ``[L, N]`` (or ``[N]``).
        scores_b: Importance at the later checkpoint, same shape.
        top_frac: Share of the population counted as the top.

    Returns:
        The share (NaN where no neuron gains).

    Raises:
        ValueError: The shapes differ, or invalid scores / top_frac.
    """
    pair = _pair(scores_a, scores_b)  # [2, L, N] or [2, N]
    return float(positive_gain_concentration(pair.reshape(2, -1), top_frac)[0])
