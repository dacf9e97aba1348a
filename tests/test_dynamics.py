"""The dynamics stage on hand-built aggregates: every expected value below is worked out by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig
from gated_lpi_exp.metrics import top_set_overlap
from gated_lpi_exp.schemas import DynamicsCurve, DynamicsSummary, LaggedOverlap, LayerProfile
from gated_lpi_exp.stages.dynamics import compute_dynamics, dynamics_metrics, layer_profiles, metric_name
from gated_lpi_exp.stages.lagged import lagged_metrics, lagged_overlaps

# 3 checkpoints, 2 layers x 5 FFN neurons (population 10; top_frac 0.2 -> top 2, per layer top 1).
FFN = {
    0: [[9, 8, 0, 0, 0], [0, 0, 0, 0, 0]],  # top {0, 1}
    10: [[0, 9, 8, 0, 0], [0, 0, 0, 0, 0]],  # top {1, 2}: J = 1/3; layer-0 gains [0,1,8,0,0] -> R = 8/9
    20: [[0, -9, -8, 0, 0], [1, 1, 2, 0, 0]],  # top {1, 2}: J = 1; layer-1 gains [1,1,2,0,0] -> R = 2/4
}
FFN_LAYER = {0: [1, 2], 10: [2, 4], 20: [3, 6]}  # profiles perfectly correlated: rho = 1
ATTN_LAYER = {0: [1, 0], 10: [0, 1], 20: [1, 0]}  # pair correlations -1, +1, -1: rho = -1/3
ATTN = [[1, 2, 3, 4], [5, 6, 7, 8]]  # identical at every step: J = 1, no gain so R = NaN


def _aggregate(step: int) -> CheckpointAggregate:
    return CheckpointAggregate(
        step=step,
        ffn=np.array(FFN[step], dtype=float),
        attn=np.array(ATTN, dtype=float),
        heads=np.zeros((2, 2)),
        ffn_layer=np.array(FFN_LAYER[step], dtype=float),
        attn_layer=np.array(ATTN_LAYER[step], dtype=float),
        n_examples=4,
        per_relation={"country_capital_city": {"ffn_layer": np.array([step, -step], dtype=float)}},
    )


@pytest.fixture
def aggregates():
    return [_aggregate(s) for s in (20, 0, 10)]  # out of order on purpose


def _value(summary, metric, unit, window="all"):
    row = summary[(summary.metric == metric) & (summary.unit == unit) & (summary.window == window)]
    assert len(row) == 1
    return row.value.item(), row.n_checkpoints.item()


def test_layer_profiles_overall_and_per_relation(aggregates):
    table = layer_profiles(aggregates)
    LayerProfile.check(table)
    assert table.step.is_monotonic_increasing
    overall = table[(table.unit == "ffn") & (table.relation == "all")]
    assert overall.importance.tolist() == [1, 2, 2, 4, 3, 6]
    assert overall.layer.tolist() == [0, 1] * 3
    rel = table[table.relation == "country_capital_city"]
    assert set(rel.unit) == {"ffn"}  # the relation carries no attn_layer array
    assert rel.importance.tolist() == [0, 0, 10, -10, 20, -20]
    assert len(table) == 3 * 2 * 2 + 3 * 2


def test_curves_at_the_later_step_of_each_pair(aggregates):
    curves, _ = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    DynamicsCurve.check(curves)
    by = {(r.metric, r.unit, r.step): r.value for r in curves.itertuples()}
    assert by[("j_stab", "ffn", 10)] == pytest.approx(1 / 3)
    assert by[("j_stab", "ffn", 20)] == pytest.approx(1.0)
    assert by[("r_t", "ffn", 10)] == pytest.approx(8 / 9)  # layer 1 has no gain: left out of the average
    assert by[("r_t", "ffn", 20)] == pytest.approx(0.5)  # layer 0 has no gain
    assert by[("j_stab", "attn", 10)] == by[("j_stab", "attn", 20)] == 1.0
    assert math.isnan(by[("r_t", "attn", 10)]) and math.isnan(by[("r_t", "attn", 20)])
    assert len(curves) == 2 * 2 * 2


def test_whole_range_summary(aggregates):
    _, summary = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    DynamicsSummary.check(summary)
    assert _value(summary, "j_stab", "ffn") == (pytest.approx(2 / 3), 3)
    assert _value(summary, "r_t", "ffn")[0] == pytest.approx((8 / 9 + 0.5) / 2)
    assert math.isnan(_value(summary, "r_t", "attn")[0])  # every step undefined -> nanmean is NaN
    assert _value(summary, "rho_avg", "ffn")[0] == pytest.approx(1.0)
    assert _value(summary, "rho_avg", "attn")[0] == pytest.approx(-1 / 3)
    # sigma_rel ffn: both layers are 1,2,3 (x1, x2): std sqrt(2/3) over mean 2.
    assert _value(summary, "sigma_rel", "ffn")[0] == pytest.approx(math.sqrt(2 / 3) / 2)
    # sigma_rel attn: layers 1,0,1 (CV 1/sqrt2) and 0,1,0 (CV sqrt2).
    assert _value(summary, "sigma_rel", "attn")[0] == pytest.approx(3 / (2 * math.sqrt(2)))


def test_windows_including_one_too_short(aggregates, caplog):
    cfg = DynamicsConfig(top_frac=0.2, windows={"early": [0, 15], "late": [20, None]})
    with caplog.at_level(logging.WARNING, logger="gated_lpi_exp.stages.dynamics"):
        _, summary = compute_dynamics(aggregates, cfg)
    assert set(summary.window) == {"all", "early", "late"} and len(summary) == 3 * 4 * 2
    assert _value(summary, "j_stab", "ffn", "early") == (pytest.approx(1 / 3), 2)
    assert _value(summary, "r_t", "ffn", "early")[0] == pytest.approx(8 / 9)
    assert _value(summary, "rho_avg", "ffn", "early")[0] == pytest.approx(1.0)
    assert _value(summary, "sigma_rel", "ffn", "early")[0] == pytest.approx(1 / 3)  # 1,2 and 2,4: CV 1/3
    late = summary[summary.window == "late"]
    assert late.value.isna().all() and (late.n_checkpoints == 1).all()
    assert "'late'" in caplog.text and "1 checkpoint" in caplog.text


def test_single_checkpoint_gives_empty_curves_and_nan_summary():
    curves, summary = compute_dynamics([_aggregate(0)], DynamicsConfig(top_frac=0.2))
    assert curves.empty and list(curves.columns) == ["metric", "unit", "step", "value"]
    assert summary.value.isna().all() and (summary.n_checkpoints == 1).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="reserved"):
        compute_dynamics([_aggregate(0), _aggregate(10)], DynamicsConfig(windows={"all": [0, 5]}))
    with pytest.raises(ValueError, match="repeat"):
        compute_dynamics([_aggregate(0), _aggregate(0)], DynamicsConfig())
    with pytest.raises(ValueError, match="at least one"):
        compute_dynamics([], DynamicsConfig())


def test_metric_names(aggregates):
    cfg = DynamicsConfig(top_frac=0.2, windows={"early": [0, 15]})
    per_step, totals = dynamics_metrics(*compute_dynamics(aggregates, cfg))
    assert sorted(per_step) == [10, 20]
    assert set(per_step[10]) == {"j_stab.ffn", "r_t.ffn", "j_stab.attn", "r_t.attn"}
    assert per_step[10]["j_stab.ffn"] == pytest.approx(1 / 3)
    assert totals["j_stab.ffn.mean"] == pytest.approx(2 / 3)
    assert totals["j_stab.ffn.early"] == pytest.approx(1 / 3)
    assert totals["rho_avg.attn"] == pytest.approx(-1 / 3)
    assert {"sigma_rel.ffn", "sigma_rel.attn.early", "r_t.attn.mean", "rho_avg.ffn.early"} <= set(totals)
    assert len(totals) == 4 * 2 * 2
    assert metric_name("r_t", "attn") == "r_t.attn" and metric_name("rho_avg", "ffn", "all") == "rho_avg.ffn"


# --- lagged pairs -------------------------------------------------------------------------------------------


def test_lagged_pairs_compare_two_chosen_checkpoints_by_hand(aggregates, caplog):
    # FFN top-2 sets: step 0 {0, 1}, step 20 {1, 2} (|I| ranks 9 and 8) -> J = 1/3. ATTN is the same at
    # every step -> J = 1. Step 12 is nearest to 10, step 19 to 20; [0, 4] both match step 0: skipped.
    with caplog.at_level(logging.WARNING):
        table = lagged_overlaps(aggregates, [[0, 19], [12, 20], [0, 4]], top_frac=0.2)
    LaggedOverlap.check(table)
    assert "[0, 4]: both steps match checkpoint 0" in caplog.text
    ffn = table[table.unit == "ffn"]
    assert ffn[["requested_a", "requested_b", "step_a", "step_b"]].values.tolist() == [
        [0, 19, 0, 20],
        [12, 20, 10, 20],
    ]
    assert ffn.value.tolist() == pytest.approx([1 / 3, 1.0])  # step 10 {1, 2} vs step 20 {1, 2}
    assert table[table.unit == "attn"].value.tolist() == [1.0, 1.0]
    assert ffn.set_size.tolist() == [2, 2] and ffn.population.tolist() == [10, 10]
    assert table.random_baseline.isna().all()  # the random-set baseline's place, filled once it exists
    assert lagged_metrics(table) == pytest.approx(
        {"j_lag.ffn.0_19": 1 / 3, "j_lag.attn.0_19": 1.0, "j_lag.ffn.12_20": 1.0, "j_lag.attn.12_20": 1.0}
    )


def test_the_lagged_overlap_of_consecutive_checkpoints_is_the_j_stab_curve(aggregates):
    curves, _ = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    table = lagged_overlaps(aggregates, [[0, 10], [10, 20]], top_frac=0.2)
    j = curves[(curves.metric == "j_stab") & (curves.unit == "ffn")].value.tolist()
    assert table[table.unit == "ffn"].value.tolist() == pytest.approx(j)


def test_top_set_overlap_matches_a_brute_force_set_count():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))  # [L, N]: one population of 150
    k = 2  # ceil(0.01 * 150)
    top_a = set(np.argsort(-np.abs(a.ravel()), kind="stable")[:k])
    top_b = set(np.argsort(-np.abs(b.ravel()), kind="stable")[:k])
    assert top_set_overlap(a, b, 0.01) == pytest.approx(len(top_a & top_b) / len(top_a | top_b))
    assert top_set_overlap(a, a, 0.01) == 1.0
    with pytest.raises(ValueError, match="same size"):
        top_set_overlap(a, b[:, :10], 0.01)
