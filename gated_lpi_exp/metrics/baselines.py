"""Random-set baselines of the set metrics: what J_stab and R_t give for random unit sets of the same size.

A top set's metric means something only next to what a set of the same size chosen without looking at the
scores would give:

- J_stab: two independent uniformly random ``k``-subsets ``A``, ``B`` of ``N`` units overlap in
  ``X ~ Hypergeometric(N, k, k)`` units, so ``E[J] = Σ_x P(X = x) · x / (2k − x)`` (closed form; about
  ``k / (2N)`` for small ``k / N``), and a seeded simulation draws such pairs.
- R_t: a random ``k``-subset of a layer's ``N`` neurons takes, in expectation, exactly ``k / N`` of the
  layer's positive gain whatever the gains are (each neuron is in the set with probability ``k / N``), so
  the closed form is ``k / N`` averaged over layers; the seeded simulation draws random sets on the real
  gains, which also shows the spread.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from gated_lpi_exp.metrics._arrays import as_float, top_count


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def expected_random_jaccard(n: int, k: int) -> float:
    """``E[|A ∩ B| / |A ∪ B|]`` for two independent uniformly random ``k``-subsets of ``n`` units.

    Args:
        n: Population size, >= 1.
        k: Set size, 1 <= k <= n.

    Raises:
        ValueError: ``k`` outside ``[1, n]``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    total = _log_choose(n, k)
    expected = 0.0
    for x in range(max(1, 2 * k - n), k + 1):  # x = 0 adds nothing
        log_p = _log_choose(k, x) + _log_choose(n - k, k - x) - total
        expected += math.exp(log_p) * x / (2 * k - x)
    return expected


def empirical_random_jaccard(n: int, k: int, draws: int, seed: int = 0) -> np.ndarray:
    """Jaccard overlap of ``draws`` seeded pairs of random ``k``-subsets of ``n`` units # [draws]"""
    if not 1 <= k <= n or draws < 1:
        raise ValueError(f"need 1 <= k <= n and draws >= 1, got n={n}, k={k}, draws={draws}")
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    member = np.zeros(n, dtype=bool)
    for d in range(draws):
        member[:] = False
        member[rng.choice(n, k, replace=False)] = True
        inter = int(member[rng.choice(n, k, replace=False)].sum())
        out[d] = inter / (2 * k - inter)
    return out


def expected_random_gain_share(layer_size: int, top_frac: float) -> float:
    """Expected share of a layer's positive gain taken by a random set of ``ceil(top_frac · N)`` neurons."""
    return top_count(layer_size, top_frac) / layer_size


def empirical_random_gain_share(scores: Any, top_frac: float, draws: int, seed: int = 0) -> np.ndarray:
    """R_t of random neuron sets on the real gains, mean over ``draws`` seeded draws # [S - 1]

    Same definition as :func:`gated_lpi_exp.metrics.positive_gain_concentration` except that each layer's
    set is ``ceil(top_frac · N)`` neurons drawn uniformly at random (a new draw per step, layer and draw).

    Args:
        scores: Importance per checkpoint ``[S, L, N]`` or ``[S, N]``, rows in training-step order.
        top_frac: Share of each layer's neurons in the set.
        draws: Random sets per step and layer.
        seed: Seed of the draws.

    Returns:
        Per step, the layer-averaged share (NaN where no layer gains), averaged over draws.
    """
    per_layer = random_gain_shares(scores, top_frac, draws, seed)  # [S-1, L]
    valid = ~np.isnan(per_layer)
    counts = valid.sum(axis=-1)
    sums = np.where(valid, per_layer, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def random_gain_shares(scores: Any, top_frac: float, draws: int, seed: int = 0) -> np.ndarray:
    """Each layer's share of positive gain taken by random sets, mean over seeded draws # [S - 1, L]

    Args:
        scores: Importance per checkpoint ``[S, L, N]`` or ``[S, N]``, rows in training-step order.
        top_frac: Share of each layer's neurons in the set.
        draws: Random sets per step and layer.
        seed: Seed of the draws.

    Returns:
        NaN for a (step, layer) without positive gain.
    """
    s = as_float(scores, "scores", (2, 3))
    if s.ndim == 2:
        s = s[:, None, :]  # [S, 1, N]
    if s.shape[0] < 2 or draws < 1:
        raise ValueError(f"need >= 2 checkpoints and draws >= 1, got shape {s.shape}, draws={draws}")
    n = s.shape[2]
    k = top_count(n, top_frac)
    mag = np.abs(s)
    gain = np.maximum(0.0, mag[1:] - mag[:-1])  # [S-1, L, N]
    total = gain.sum(axis=-1)  # [S-1, L]
    rng = np.random.default_rng(seed)
    shares = np.zeros(total.shape)  # [S-1, L]
    for _ in range(draws):
        # argpartition of uniform keys = a uniformly random k-subset per (step, layer), all at once.
        chosen = np.argpartition(rng.random(gain.shape), k - 1, axis=-1)[..., :k]  # [S-1, L, k]
        shares += np.take_along_axis(gain, chosen, axis=-1).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, shares / draws / total, np.nan)  # [S-1, L]


# Registry hooks (``MetricSpec.baseline``): the arguments of the metric's function, plus ``draws`` and
# ``seed``. ``draws=0`` gives the closed form; ``draws > 0`` the mean over that many seeded random sets.


def _pair(scores_a: Any, scores_b: Any) -> np.ndarray:
    a, b = as_float(scores_a, "scores_a", (1, 2)), as_float(scores_b, "scores_b", (1, 2))
    if a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must have the same shape, got {a.shape} and {b.shape}")
    return np.stack([a, b]) if a.ndim == 2 else np.stack([a, b])[:, None, :]  # [2, L, N]


@functools.lru_cache(maxsize=64)
def _random_jaccard(n: int, k: int, draws: int, seed: int) -> float:
    """Cached: the value depends only on the sizes, so every pair of a series shares it."""
    if draws == 0:
        return expected_random_jaccard(n, k)
    return float(empirical_random_jaccard(n, k, draws, seed).mean())


def random_overlap(
    scores_a: Any, scores_b: Any, top_frac: float = 0.01, *, draws: int = 0, seed: int = 0
) -> float:
    """J_t of two random sets of the top set's size over the same population (baseline of ``j_stab``)."""
    n = _pair(scores_a, scores_b)[0].size
    return _random_jaccard(n, top_count(n, top_frac), draws, seed)


def random_gain_concentration_by_layer(
    scores_a: Any, scores_b: Any, top_frac: float = 0.01, *, draws: int = 0, seed: int = 0
) -> np.ndarray:
    """Each layer's R_t for random sets of the top set's size (baseline of ``r_t_layer``) # [L]"""
    pair = _pair(scores_a, scores_b)  # [2, L, N]
    if draws == 0:
        return np.full(pair.shape[1], expected_random_gain_share(pair.shape[2], top_frac))
    return random_gain_shares(pair, top_frac, draws, seed)[0]


def random_gain_concentration(
    scores_a: Any, scores_b: Any, top_frac: float = 0.01, *, draws: int = 0, seed: int = 0
) -> float:
    """R_t for random sets of the top set's size in every layer (baseline of ``r_t``)."""
    pair = _pair(scores_a, scores_b)  # [2, L, N]
    if draws == 0:
        return expected_random_gain_share(pair.shape[2], top_frac)
    return float(empirical_random_gain_share(pair, top_frac, draws, seed)[0])


def random_pooled_gain_concentration(
    scores_a: Any, scores_b: Any, top_frac: float = 0.01, *, draws: int = 0, seed: int = 0
) -> float:
    """Pooled R_t for a random set of the pooled top set's size (baseline of ``r_t_pop``)."""
    pooled = _pair(scores_a, scores_b).reshape(2, 1, -1)  # [2, 1, L*N]
    return random_gain_concentration(pooled[0], pooled[1], top_frac, draws=draws, seed=seed)
