"""Metrics (paper eqs. 6-11) against hand-worked numbers and slow brute-force references."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from gated_lpi_exp.metrics import (
    METRICS,
    MetricSpec,
    cross_step_cv,
    drop_percent,
    gain_concentration,
    get_metric,
    gold_ranks,
    hit_at_k,
    hit_rate,
    jaccard_stability,
    layer_consistency,
    metric_versions,
    metrics_for,
    positive_gain_concentration,
    register_metric,
    top_count,
    top_set,
    top_set_overlap,
    window_mask,
)
from gated_lpi_exp.metrics.neurons import gain_concentration_by_layer

# ---------------------------------------------------------------- brute-force references (python loops/sets)


def _ref_top(row, k):
    # Sort all indices by (-|s|, index): largest magnitude first, lower index wins ties.
    return sorted(range(len(row)), key=lambda i: (-abs(float(row[i])), i))[:k]


def _ref_jaccard(scores, k):
    curve = []
    for t in range(len(scores) - 1):
        a, b = set(_ref_top(scores[t], k)), set(_ref_top(scores[t + 1], k))
        curve.append(len(a & b) / len(a | b))
    return curve


def _ref_r_t_layers(previous, current, k):
    # previous, current: [L, N] nested lists / arrays; one ratio per layer, NaN without positive gain.
    ratios = []
    for layer in range(len(current)):
        gains = [
            max(0.0, abs(float(current[layer][i])) - abs(float(previous[layer][i])))
            for i in range(len(current[layer]))
        ]
        total = sum(gains)
        ratios.append(sum(sorted(gains, reverse=True)[:k]) / total if total > 0 else math.nan)
    return ratios


def _ref_r_t(scores, k):
    # scores: [S, L, N] nested lists / array
    curve = []
    for t in range(1, len(scores)):
        ratios = [r for r in _ref_r_t_layers(scores[t - 1], scores[t], k) if not math.isnan(r)]
        curve.append(sum(ratios) / len(ratios) if ratios else math.nan)
    return curve


# ---------------------------------------------------------------- top_count / top_set


@pytest.mark.parametrize(
    ("n", "frac", "expected"),
    [
        (300, 0.01, 3),  # 3.0 exactly
        (100, 0.01, 1),
        (101, 0.01, 2),  # 1.01 -> 2
        (1, 0.01, 1),  # never an empty top set
        (100, 0.07, 7),  # float 0.07*100 = 7.000000000000001; a naive ceil gives 8
        (300, 0.07, 21),  # float 0.07*300 = 21.000000000000004
        (10, 1.0, 10),
    ],
)
def test_top_count_is_an_exact_ceil(n, frac, expected):
    assert top_count(n, frac) == expected


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5])
def test_top_count_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match="top_frac"):
        top_count(10, frac)


def test_top_set_ranks_by_magnitude_ties_to_lower_index():
    # |s| = [0.5, 3, 2, 3, 1]; indices 1 and 3 tie at 3 -> 1 first, then 3, then 2 (|2|).
    s = [0.5, -3.0, 2.0, 3.0, -1.0]
    assert top_set(s, top_frac=0.2).tolist() == [1]  # k = ceil(1.0) = 1: the lower tied index
    assert top_set(s, top_frac=0.4).tolist() == [1, 3]  # k = 2
    assert top_set(s, top_frac=0.6).tolist() == [1, 3, 2]  # k = 3, rank order
    # All equal: k = ceil(0.5*4) = 2 lowest indices.
    assert top_set([7.0, -7.0, 7.0, 7.0], top_frac=0.5).tolist() == [0, 1]


def test_top_set_n300_gives_three():
    s = np.zeros(300)
    s[[250, 10, 99, 3]] = [-5.0, 4.0, 4.0, 1.0]  # |.|: 5 at 250, then 10 and 99 tied at 4
    assert top_set(s).tolist() == [250, 10, 99]


def test_top_set_rejects_nan_and_empty():
    with pytest.raises(ValueError, match="NaN"):
        top_set([1.0, float("nan")])
    with pytest.raises(ValueError, match="population"):
        top_set(np.zeros(0))


# ---------------------------------------------------------------- J_stab (eq. 7)


def _rows_with_tops(tops, n=300):
    # One row per checkpoint whose top-3 by |.| is exactly `tops` (descending magnitudes 10, 9, 8, mixed signs).
    rows = np.zeros((len(tops), n))
    for r, idx in enumerate(tops):
        rows[r, idx] = [10.0, -9.0, 8.0]
    return rows


def test_jaccard_hand_worked():
    # N=300 -> k=3. Top0={0,1,2}, Top1={2,3,4}: |∩|=1, |∪|=5 -> 1/5.
    # Top1={2,3,4}, Top2={2,3,5}: |∩|=2, |∪|=4 -> 2/4.  J_stab = (0.2+0.5)/2 = 0.35.
    scores = _rows_with_tops([[0, 1, 2], [2, 3, 4], [2, 3, 5]])
    mean, curve = jaccard_stability(scores)
    np.testing.assert_allclose(curve, [0.2, 0.5])
    assert mean == pytest.approx(0.35)


def test_jaccard_tie_break_decides_the_set():
    # N=4, top_frac=0.5 -> k=2. Row0 all tied -> {0,1}; row1 |.|=[0,1,1,1] -> {1,2}: 1/3.
    mean, curve = jaccard_stability([[1.0, 1.0, 1.0, 1.0], [0.0, -1.0, 1.0, 1.0]], top_frac=0.5)
    np.testing.assert_allclose(curve, [1 / 3])


def test_jaccard_flattens_layers_into_one_population():
    # [S=2, L=2, N=50] -> population 100, k=1: the single largest over both layers.
    s = np.zeros((2, 2, 50))
    s[0, 1, 7] = 5.0  # flat index 57
    s[1, 1, 7] = -6.0  # same neuron, so J = 1
    assert jaccard_stability(s)[0] == 1.0
    s[1, 0, 7] = 9.0  # flat index 7 now wins at t=1: disjoint singletons -> 0
    assert jaccard_stability(s)[0] == 0.0


def test_jaccard_needs_two_checkpoints():
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        jaccard_stability(np.ones((1, 10)))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("integer", [False, True])
def test_jaccard_matches_bruteforce(seed, integer):
    rng = np.random.default_rng(seed)
    shape = (6, 230)
    # Small integer scores force many ties, exercising the lower-index rule.
    s = rng.integers(-4, 5, size=shape).astype(float) if integer else rng.normal(size=shape)
    for frac in (0.01, 0.05, 0.3):
        k = math.ceil(round(frac * shape[1], 9))
        mean, curve = jaccard_stability(s, top_frac=frac)
        ref = _ref_jaccard(s.tolist(), k)
        np.testing.assert_allclose(curve, ref)
        assert mean == pytest.approx(sum(ref) / len(ref))
        for row in s:
            assert top_set(row, frac).tolist() == _ref_top(row.tolist(), k)


def test_top_set_overlap_of_a_pair_is_one_value_of_the_curve():
    rng = np.random.default_rng(3)
    s = rng.integers(-4, 5, size=(4, 3, 40)).astype(float)  # ties, so the lower-index rule decides sets
    _, curve = jaccard_stability(s, 0.05)
    pairs = [top_set_overlap(s[t], s[t + 1], 0.05) for t in range(3)]
    assert pairs == curve.tolist()  # the same computation, so the same floats
    with pytest.raises(ValueError, match="same size"):
        top_set_overlap(np.ones((2, 3)), np.ones((2, 4)))


def test_jaccard_accepts_torch_including_bf16():
    scores = _rows_with_tops([[0, 1, 2], [2, 3, 4], [2, 3, 5]])
    for dtype in (torch.float32, torch.bfloat16):
        mean, curve = jaccard_stability(torch.tensor(scores, dtype=dtype))
        np.testing.assert_allclose(curve, [0.2, 0.5])
        assert isinstance(mean, float)


# ---------------------------------------------------------------- R_t (eq. 8)


def test_r_t_two_layer_hand_worked():
    # N=4, top_frac=0.25 -> k=1.  Signs are irrelevant (|I| is used).
    layer0 = [[1, -2, 3, 4], [2, 2, -5, 1], [1, 1, 1, -1], [1, 1, 1, 1]]
    layer1 = [[0, 0, 0, 0], [1, 1, -1, 1], [0, -5, 1, 4], [0, 5, 1, 4]]
    scores = np.stack([np.array(layer0), np.array(layer1)], axis=1).astype(float)  # [S=4, L=2, N=4]
    # t=1: L0 Δ⁺ = max(0, [2,2,5,1]-[1,2,3,4]) = [1,0,2,0], sum 3, top1 = 2 -> 2/3
    #      L1 Δ⁺ = [1,1,1,1], sum 4, top1 = 1 -> 1/4;          R_1 = (2/3 + 1/4)/2 = 11/24
    # t=2: L0 [1,1,1,1]-[2,2,5,1] <= 0 everywhere -> NaN (skipped)
    #      L1 [0,5,1,4]-[1,1,1,1] -> Δ⁺ = [0,4,0,3], sum 7, top1 = 4 -> 4/7;  R_2 = 4/7
    # t=3: both layers unchanged in |I| -> all NaN -> NaN
    curve = positive_gain_concentration(scores, top_frac=0.25)
    assert curve.shape == (3,)
    assert curve[0] == pytest.approx(11 / 24)
    assert curve[1] == pytest.approx(4 / 7)
    assert math.isnan(curve[2])


def test_r_t_2d_input_is_one_layer():
    # Layer 0 of the toy above: [2/3, NaN, NaN].
    curve = positive_gain_concentration([[1, -2, 3, 4], [2, 2, -5, 1], [1, 1, 1, -1], [1, 1, 1, 1]], 0.25)
    assert curve[0] == pytest.approx(2 / 3)
    assert np.isnan(curve[1:]).all()


def test_r_t_needs_two_checkpoints():
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        positive_gain_concentration(np.ones((1, 2, 10)))


@pytest.mark.parametrize("seed", range(5))
def test_r_t_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(5, 3, 150))
    s[2, 1] = s[1, 1]  # one layer with no change -> NaN layer at t=2
    s[4] = s[3]  # a step with no gain anywhere -> NaN step
    for frac in (0.01, 0.1):
        k = math.ceil(round(frac * 150, 9))
        np.testing.assert_allclose(
            positive_gain_concentration(s, frac), _ref_r_t(s.tolist(), k), equal_nan=True
        )


def test_gain_concentration_of_a_pair_is_one_value_of_the_curve():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(4, 3, 50))
    s[2, 1] = s[1, 1]  # a layer without gain between checkpoints 1 and 2
    curve = positive_gain_concentration(s, 0.1)
    pairs = [gain_concentration(s[t], s[t + 1], 0.1) for t in range(3)]
    np.testing.assert_array_equal(pairs, curve)
    with pytest.raises(ValueError, match="same shape"):
        gain_concentration(np.ones((2, 3)), np.ones((3, 2)))


def test_r_t_per_layer_hand_worked_and_against_bruteforce():
    # The two-layer toy of test_r_t_two_layer_hand_worked, pair t=0 -> 1: layer 0 2/3, layer 1 1/4;
    # pair 1 -> 2: layer 0 has no gain (NaN), layer 1 4/7.
    layer0 = [[1, -2, 3, 4], [2, 2, -5, 1], [1, 1, 1, -1]]
    layer1 = [[0, 0, 0, 0], [1, 1, -1, 1], [0, -5, 1, 4]]
    scores = np.stack([np.array(layer0), np.array(layer1)], axis=1).astype(float)  # [S=3, L=2, N=4]
    assert gain_concentration_by_layer(scores[0], scores[1], 0.25).tolist() == pytest.approx([2 / 3, 1 / 4])
    second = gain_concentration_by_layer(scores[1], scores[2], 0.25)
    assert math.isnan(second[0]) and second[1] == pytest.approx(4 / 7)
    rng = np.random.default_rng(5)
    s = rng.normal(size=(3, 4, 120))
    s[1, 2] = s[0, 2]  # a layer without gain
    for frac in (0.01, 0.1):
        k = math.ceil(round(frac * 120, 9))
        for t in range(2):
            np.testing.assert_allclose(
                gain_concentration_by_layer(s[t], s[t + 1], frac), _ref_r_t_layers(s[t], s[t + 1], k)
            )
        # R_t is the mean over the defined layers (summed in another order here: equal to rounding).
        by_layer = gain_concentration_by_layer(s[0], s[1], frac)
        assert gain_concentration(s[0], s[1], frac) == pytest.approx(np.nanmean(by_layer), rel=1e-12)


def test_r_t_accepts_torch():
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, -5.0, 1.0]])
    assert positive_gain_concentration(t, 0.25)[0] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- ρ_avg (eqs. 9-10)


def test_rho_perfect_and_anti_correlation():
    assert layer_consistency([[1, 2, 3], [2, 4, 6]]) == pytest.approx(1.0)
    assert layer_consistency([[1, 2, 3], [3, 2, 1]]) == pytest.approx(-1.0)


def test_rho_hand_worked_3x3():
    # Centred rows: A=[-1,0,1], B=[-1,1,0], C=[1,-1,0]; each has norm sqrt(2).
    # corr(A,B) = 1/2, corr(A,C) = -1/2, corr(B,C) = -2/2 = -1  ->  ρ_avg = (0.5 - 0.5 - 1)/3 = -1/3
    assert layer_consistency(np.array([[1, 2, 3], [1, 3, 2], [3, 1, 2]])) == pytest.approx(-1 / 3)


def test_rho_skips_constant_profiles():
    # The constant row (0.1 three times, whose mean is not exactly 0.1) makes pairs (A,K), (B,K) undefined;
    # only (A,B) = 1/2 remains.
    assert layer_consistency([[1, 2, 3], [1, 3, 2], [0.1, 0.1, 0.1]]) == pytest.approx(0.5)
    assert math.isnan(layer_consistency([[5, 5, 5], [1, 2, 3]]))
    assert math.isnan(layer_consistency([[5, 5], [2, 2]]))


def test_rho_rejects_one_checkpoint_and_is_undefined_for_one_layer():
    with pytest.raises(ValueError, match=">= 2 checkpoints"):
        layer_consistency([[1, 2, 3]])
    assert math.isnan(layer_consistency([[1], [2]]))  # one layer: a constant profile, no correlation


# ---------------------------------------------------------------- σ_rel (eq. 11)


def test_sigma_rel_hand_worked_population_std():
    # Columns over S=2: [1,3]: μ=2, σ=1 -> 0.5;  [2,2]: μ=2, σ=0 -> 0;  [-1,-3]: μ=-2, σ=1 -> 1/|-2| = 0.5
    # σ_rel = (0.5 + 0 + 0.5)/3 = 1/3   (sample std would give sqrt(2)/2 for the first column instead)
    x = [[1, 2, -1], [3, 2, -3]]
    assert cross_step_cv(x) == pytest.approx(1 / 3)
    # A zero-mean column [1,-1] is skipped, leaving the same three layers.
    assert cross_step_cv([[1, 2, -1, 1], [3, 2, -3, -1]]) == pytest.approx(1 / 3)
    assert cross_step_cv(torch.tensor(x, dtype=torch.float32)) == pytest.approx(1 / 3)


def test_sigma_rel_all_zero_mean_is_nan():
    assert math.isnan(cross_step_cv([[1, 0], [-1, 0]]))


# ---------------------------------------------------------------- HIT@k (eq. 6)


def test_hit_at_k_with_ties():
    logits = [[1, 5, 3, 5], [2, 2, 2, 2], [0, 1, 2, 3]]
    targets = [2, 3, 0]
    # Strictly greater than the target's logit: row0 target 3 -> two 5s -> 2; row1 all tied -> 0; row2 -> 3.
    # hit iff count < k.  k=1: [F, T, F] -> 1/3;  k=2: [F, T, F] -> 1/3;  k=3: [T, T, F] -> 2/3;  k=4: all -> 1
    assert hit_at_k(logits, targets, 1) == pytest.approx(1 / 3)
    assert hit_at_k(logits, targets, 2) == pytest.approx(1 / 3)
    assert hit_at_k(logits, targets, 3) == pytest.approx(2 / 3)
    assert hit_at_k(logits, targets, 4) == 1.0


def test_hit_rate_of_ranks_and_gold_ranks_of_logits():
    # Ranks of the tie example above: 1 + (number strictly greater) = [3, 1, 4].
    ranks = gold_ranks([[1, 5, 3, 5], [2, 2, 2, 2], [0, 1, 2, 3]], [2, 3, 0])
    assert ranks.tolist() == [3, 1, 4] and ranks.dtype == np.int64
    assert [hit_rate(ranks, k) for k in (1, 3, 4)] == [1 / 3, 2 / 3, 1.0]
    with pytest.raises(ValueError, match="ranks start at 1"):
        hit_rate([0, 2], 1)
    with pytest.raises(ValueError, match="k must be"):
        hit_rate([1, 2], 0)
    with pytest.raises(ValueError, match="at least one"):
        hit_rate([], 1)


def test_hit_at_k_torch_and_masked_logits():
    logits = torch.tensor([[0.0, -float("inf"), 1.0], [3.0, 2.0, 1.0]], dtype=torch.bfloat16)
    # row0 target 0: one greater (1.0) -> miss at k=1, hit at k=2; row1 target 0 is the max -> hit.
    assert hit_at_k(logits, torch.tensor([0, 0]), 1) == 0.5
    assert hit_at_k(logits, torch.tensor([0, 0]), 2) == 1.0


@pytest.mark.parametrize(
    ("logits", "targets", "k", "match"),
    [
        ([[1.0, float("nan")]], [0], 1, "NaN"),
        ([[1.0, 2.0]], [2], 1, "targets must lie"),
        ([[1.0, 2.0]], [0], 0, "k must be"),
        ([[1.0, 2.0]], [0, 1], 1, "logits must be"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), 1, "at least one"),
    ],
)
def test_hit_at_k_rejects_bad_input(logits, targets, k, match):
    with pytest.raises(ValueError, match=match):
        hit_at_k(logits, targets, k)


# ---------------------------------------------------------------- drop %


def test_drop_percent():
    assert drop_percent(0.8, 0.6) == pytest.approx(25.0)  # 100 * 0.2 / 0.8
    assert drop_percent(0.5, 0.6) == pytest.approx(-20.0)  # ablation helped
    assert drop_percent(0.4, 0.0) == pytest.approx(100.0)
    assert math.isnan(drop_percent(0.0, 0.3))
    assert math.isnan(drop_percent(float("nan"), 0.3))


# ---------------------------------------------------------------- windows


def test_window_mask():
    steps = [0, 1000, 5000, 10000]
    assert window_mask(steps, 1000, 10000).tolist() == [False, True, True, False]  # [start, stop)
    assert window_mask(steps, None, 5000).tolist() == [True, True, False, False]
    assert window_mask(steps, 5000, None).tolist() == [False, False, True, True]
    assert window_mask(steps, None, None).all()
    with pytest.raises(ValueError, match="after its stop"):
        window_mask(steps, 10, 5)


# ---------------------------------------------------------------- registry


def test_registry_contents():
    expected = {
        "j_stab": ("pair", None),
        "r_t": ("pair", None),
        "rho_avg": ("profile", None),
        "sigma_rel": ("profile", None),
        "hit_at_k": ("ranks", True),
        "drop_percent": ("ablation", False),
    }
    assert {n: (METRICS[n].input, METRICS[n].higher_is_better) for n in expected} == expected
    assert get_metric("j_stab").fn is top_set_overlap
    assert get_metric("j_stab").paper_ref == "eq. 7" and get_metric("j_stab").label == "J_stab"
    assert metric_versions()["sigma_rel"] == 1
    # hit_at_k on ranks: 3 of 11 logits strictly above the target -> rank 4: a hit at 10, not at 1.
    assert get_metric("hit_at_k").fn(gold_ranks([[*range(11)]], [7]), 10) == 1.0
    assert get_metric("hit_at_k").fn(gold_ranks([[*range(11)]], [7]), 1) == 0.0
    assert [s.name for s in metrics_for("profile")] == ["rho_avg", "sigma_rel"]
    assert get_metric("j_stab").display.scale == 100 and get_metric("drop_percent").display.scale == 1


def test_registry_aggregation_and_frozen():
    spec = get_metric("r_t")
    assert spec.aggregate([0.2, float("nan"), 0.4]) == pytest.approx(0.3)  # nanmean
    assert get_metric("j_stab").aggregate([0.2, 0.5]) == pytest.approx(0.35)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.version = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown aggregation"):
        MetricSpec("x", len, "pair", "x", "ratio", True, "median-ish", "d", "eq. 0")
    with pytest.raises(ValueError, match="unknown input"):
        MetricSpec("x", len, "triple", "x", "ratio", True, "none", "d", "eq. 0")
    with pytest.raises(ValueError, match="per_layer"):
        MetricSpec("x", len, "profile", "x", "ratio", True, "none", "d", "eq. 0", per_layer=True)


def test_get_metric_unknown_lists_names():
    with pytest.raises(KeyError, match="known metrics:.*j_stab"):
        get_metric("j_stabb")


def test_register_metric_as_decorator_and_duplicate(monkeypatch):
    monkeypatch.setattr("gated_lpi_exp.metrics.registry.METRICS", dict(METRICS))
    from gated_lpi_exp.metrics import registry

    common = dict(label="x", unit="ratio", higher_is_better=None, aggregation="none", description="d")
    fn = register_metric("spread", input="profile", paper_ref="-", **common)(np.ptp)
    assert registry.METRICS["spread"].fn is fn and registry.get_metric("spread").version == 1
    assert registry.metrics_for("profile")[-1].name == "spread"
    with pytest.raises(ValueError, match="already registered"):
        register_metric("j_stab", input="pair", paper_ref="", **common)(len)
    assert "spread" not in METRICS  # the module-level registry was not touched
