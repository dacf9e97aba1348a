"""Bootstrap intervals and random-set baselines, against hand computations, enumeration and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gated_lpi_exp.metrics import positive_gain_concentration
from gated_lpi_exp.metrics.baselines import (
    empirical_random_gain_share,
    empirical_random_jaccard,
    expected_random_gain_share,
    expected_random_jaccard,
)
from gated_lpi_exp.metrics.bootstrap import (
    example_weights,
    mean_interval,
    percentile_interval,
    weighted_means,
)


def test_an_examples_weights_depend_only_on_its_identity_not_on_its_position_or_company():
    full = example_weights(["a", "a", "b", "c"], [0, 1, 0, 5], resamples=50, seed=3)
    subset = example_weights(["c", "a"], [5, 1], resamples=50, seed=3)
    np.testing.assert_array_equal(subset[:, 0], full[:, 3])
    np.testing.assert_array_equal(subset[:, 1], full[:, 1])
    other_seed = example_weights(["a"], [0], resamples=50, seed=4)
    assert not np.array_equal(other_seed[:, 0], full[:, 0])


def test_weights_are_poisson_with_mean_and_variance_one():
    """Mean and variance of 200,000 draws; their standard errors are ~0.0022 and ~0.0040 (Poisson(1))."""
    w = example_weights([f"r{i}" for i in range(200)], list(range(200)), resamples=1000, seed=0)
    assert set(np.unique(w)) <= set(range(20))
    assert abs(w.mean() - 1.0) < 0.01
    assert abs(w.var() - 1.0) < 0.02


def test_weighted_means_match_a_hand_computation():
    values = np.array([1.0, 0.0, 3.0])
    weights = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    means = weighted_means(values, weights)
    assert means[0] == pytest.approx(4.0 / 3.0)
    assert means[1] == pytest.approx((2.0 + 3.0) / 3.0)
    assert math.isnan(means[2])  # an empty replicate is undefined, not 0


def test_weighted_means_keep_trailing_dimensions():
    values = np.arange(12, dtype=float).reshape(3, 2, 2)
    weights = np.array([[1.0, 0.0, 1.0]])
    np.testing.assert_allclose(weighted_means(values, weights)[0], (values[0] + values[2]) / 2)


def test_percentile_interval_is_the_two_tails_of_the_replicates():
    reps = np.arange(1.0, 102.0)  # 1..101: the 2.5th percentile is 3.5, the 97.5th is 98.5
    low, high = percentile_interval(reps, 0.95)
    assert (low, high) == (pytest.approx(3.5), pytest.approx(98.5))
    low90, high90 = percentile_interval(reps, 0.90)
    assert (low90, high90) == (pytest.approx(6.0), pytest.approx(96.0))


def test_percentile_interval_skips_undefined_replicates_and_gives_up_when_most_are():
    reps = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, 5.0], [np.nan, np.nan]])
    low, high = percentile_interval(reps, 0.5)
    assert low[0] == pytest.approx(1.5) and high[0] == pytest.approx(2.5)
    assert math.isnan(low[1]) and math.isnan(high[1])  # one defined replicate of four


def test_the_interval_of_a_mean_covers_the_true_value_about_95_percent_of_the_time():
    """200 data sets of 150 Bernoulli(0.3) draws; a 95% interval should cover 0.3 in ~190 of them.
    Bootstrap percentile intervals of a proportion under-cover slightly at this n; accept 88-99%."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        hits = (rng.random(150) < 0.3).astype(float)
        weights = example_weights(["x"] * 150, list(range(150)), resamples=300, seed=trial)
        low, high = mean_interval(hits, weights)
        assert low <= hits.mean() <= high
        covered += low <= 0.3 <= high
    assert 176 <= covered <= 198


def _brute_force_jaccard(n: int, k: int) -> float:
    subsets = [set(c) for c in itertools.combinations(range(n), k)]
    values = [len(a & b) / len(a | b) for a in subsets for b in subsets]
    return sum(values) / len(values)


@pytest.mark.parametrize(("n", "k"), [(6, 2), (7, 3), (5, 5), (8, 1)])
def test_expected_random_jaccard_equals_enumerating_every_pair_of_subsets(n, k):
    assert expected_random_jaccard(n, k) == pytest.approx(_brute_force_jaccard(n, k), rel=1e-12)


def test_expected_random_jaccard_matches_its_seeded_simulation():
    """4,000 draws of J for N=2,000, k=20: the sd of J is ~0.005, so the mean's error is ~1e-4."""
    expected = expected_random_jaccard(2000, 20)
    simulated = empirical_random_jaccard(2000, 20, draws=4000, seed=1)
    assert simulated.shape == (4000,)
    assert simulated.mean() == pytest.approx(expected, abs=5e-4)
    assert expected == pytest.approx(0.01 / 1.99, rel=0.05)  # ~ (k/N) / (2 - k/N) for small k/N


def test_a_hand_worked_random_jaccard():
    """N=4, k=2: overlap 2 w.p. 1/6 (J=1), 1 w.p. 4/6 (J=1/3), 0 w.p. 1/6 (J=0): E[J] = 1/6 + 2/9 = 7/18."""
    assert expected_random_jaccard(4, 2) == pytest.approx(7 / 18)


def test_expected_random_gain_share_is_the_set_size_over_the_layer_size():
    assert expected_random_gain_share(1280, 0.01) == pytest.approx(13 / 1280)
    assert expected_random_gain_share(100, 0.07) == pytest.approx(0.07)


def test_random_sets_take_their_share_of_the_gain_whatever_its_shape():
    """All gain in one of 4 neurons, k=1: a random neuron takes it w.p. 1/4. 20,000 draws: sd of the mean
    is ~0.003."""
    scores = np.zeros((2, 1, 4))
    scores[1, 0, 2] = 5.0
    share = empirical_random_gain_share(scores, top_frac=0.25, draws=20000, seed=0)
    assert share[0] == pytest.approx(0.25, abs=0.01)
    assert positive_gain_concentration(scores, 0.25)[0] == 1.0  # the top set takes it all


def test_random_gain_share_is_undefined_where_no_neuron_gains():
    scores = np.ones((3, 2, 10))
    scores[2, 1, 0] = 2.0  # step 2, layer 1 gains; step 1 gains nowhere
    share = empirical_random_gain_share(scores, top_frac=0.1, draws=50, seed=0)
    assert math.isnan(share[0])
    assert 0.0 <= share[1] <= 1.0
