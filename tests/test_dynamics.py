"""The dynamics stage on hand-built aggregates: every expected value below is worked out by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig
from gated_lpi_exp.metrics import top_set_overlap
from gated_lpi_exp.metrics.baselines import random_overlap
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


def _dynamics(aggregates, cfg):
    tables = compute_dynamics(aggregates, cfg)
    return tables["dynamics_curves"], tables["dynamics_summary"]


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
    curves, _ = _dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    DynamicsCurve.check(curves)
    by = {(r.metric, r.unit, r.step): r.value for r in curves.itertuples()}
    assert by[("j_stab", "ffn", 10)] == pytest.approx(1 / 3)
    assert by[("j_stab", "ffn", 20)] == pytest.approx(1.0)
    assert by[("r_t", "ffn", 10)] == pytest.approx(8 / 9)  # layer 1 has no gain: left out of the average
    assert by[("r_t", "ffn", 20)] == pytest.approx(0.5)  # layer 0 has no gain
    assert by[("j_stab", "attn", 10)] == by[("j_stab", "attn", 20)] == 1.0
    assert math.isnan(by[("r_t", "attn", 10)]) and math.isnan(by[("r_t", "attn", 20)])
    # Pooled: one top-2 set over all 10 neurons. 0->10 gains 8 and 1 of 9; 10->20 gains 2 and 1 of 4.
    assert by[("r_t_pop", "ffn", 10)] == pytest.approx(1.0)
    assert by[("r_t_pop", "ffn", 20)] == pytest.approx(0.75)
    assert len(curves) == 3 * 2 * 2
    assert curves.ci_low.isna().all()  # no replicates, no intervals


def test_whole_range_summary(aggregates):
    _, summary = _dynamics(aggregates, DynamicsConfig(top_frac=0.2))
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
        _, summary = _dynamics(aggregates, cfg)
    assert set(summary.window) == {"all", "early", "late"} and len(summary) == 3 * 5 * 2
    assert _value(summary, "j_stab", "ffn", "early") == (pytest.approx(1 / 3), 2)
    assert _value(summary, "r_t", "ffn", "early")[0] == pytest.approx(8 / 9)
    assert _value(summary, "rho_avg", "ffn", "early")[0] == pytest.approx(1.0)
    assert _value(summary, "sigma_rel", "ffn", "early")[0] == pytest.approx(1 / 3)  # 1,2 and 2,4: CV 1/3
    late = summary[summary.window == "late"]
    assert late.value.isna().all() and (late.n_checkpoints == 1).all()
    assert "'late'" in caplog.text and "1 checkpoint" in caplog.text


def test_r_t_per_layer_curve_and_summary(aggregates):
    tables = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2, windows={"early": [0, 15]}))
    curves = tables["dynamics_layer_curves"].query("metric == 'r_t_layer' and unit == 'ffn'")
    by = {(r.layer, r.step): r.value for r in curves.itertuples()}
    # FFN layer 0 gains 8 of 9 at step 10 and nothing at 20; layer 1 nothing at 10 and 2 of 4 at 20.
    assert by[(0, 10)] == pytest.approx(8 / 9) and by[(1, 20)] == pytest.approx(0.5)
    assert math.isnan(by[(1, 10)]) and math.isnan(by[(0, 20)]) and len(by) == 4
    summary = tables["dynamics_layer_summary"].query("metric == 'r_t_layer' and unit == 'ffn'")
    means = {(r.layer, r.window): r.value for r in summary.itertuples()}
    assert means[(0, "all")] == pytest.approx(8 / 9) and means[(1, "all")] == pytest.approx(0.5)
    assert means[(0, "early")] == pytest.approx(8 / 9) and math.isnan(means[(1, "early")])
    # The layer average of the per-layer curve is the R_t curve.
    r_t = tables["dynamics_curves"].query("metric == 'r_t' and unit == 'ffn'").set_index("step").value
    assert curves.groupby("step").value.mean().to_dict() == pytest.approx(r_t.to_dict())


def test_single_checkpoint_gives_empty_curves_and_nan_summary():
    curves, summary = _dynamics([_aggregate(0)], DynamicsConfig(top_frac=0.2))
    assert curves.empty and list(curves.columns) == list(DynamicsCurve.to_schema().columns)
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
    per_step, totals = dynamics_metrics(compute_dynamics(aggregates, cfg))
    assert sorted(per_step) == [10, 20]
    layers = {f"r_t_layer.{unit}.layer{i}" for unit in ("ffn", "attn") for i in (0, 1)}
    values = {n for n in per_step[10] if not n.endswith((".ci_low", ".ci_high", ".baseline"))}
    pair = {f"{m}.{u}" for m in ("j_stab", "r_t", "r_t_pop") for u in ("ffn", "attn")}
    assert values == pair | layers
    assert per_step[10]["j_stab.ffn.baseline"] == pytest.approx(19 / 135)
    assert per_step[10]["j_stab.ffn"] == pytest.approx(1 / 3)
    assert totals["j_stab.ffn.mean"] == pytest.approx(2 / 3)
    assert totals["j_stab.ffn.early"] == pytest.approx(1 / 3)
    assert totals["rho_avg.attn"] == pytest.approx(-1 / 3)
    assert {"sigma_rel.ffn", "sigma_rel.attn.early", "r_t.attn.mean", "rho_avg.ffn.early"} <= set(totals)
    # Per-layer summaries stay in their table.
    assert len([n for n in totals if not n.endswith(".baseline")]) == 5 * 2 * 2
    assert totals["r_t.ffn.mean.baseline"] == pytest.approx(0.2)
    assert not any(n.endswith(".ci_low") for n in totals)  # no replicates, no intervals
    assert metric_name("r_t", "attn") == "r_t.attn" and metric_name("rho_avg", "ffn", "all") == "rho_avg.ffn"


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the metric registry, so a test can register a metric without touching the real one."""
    from gated_lpi_exp.metrics import METRICS, registry

    monkeypatch.setattr(registry, "METRICS", dict(METRICS))
    return registry


def test_a_registered_pair_metric_reaches_every_table_and_name_without_other_edits(
    aggregates, scratch_registry
):
    def top_share(scores_a, scores_b, top_frac):  # share of |I| mass in the later checkpoint's top neuron
        b = np.abs(np.asarray(scores_b)).ravel()
        return float(b.max() / b.sum()) if b.sum() else math.nan

    scratch_registry.register_metric(
        "top_share", input="pair", label="top share", unit="fraction", higher_is_better=None,
        aggregation="mean", description="d", paper_ref="-",
    )(top_share)  # fmt: skip
    cfg = DynamicsConfig(top_frac=0.2, windows={"early": [0, 15]})
    tables = compute_dynamics(aggregates, cfg)
    curve = tables["dynamics_curves"].query("metric == 'top_share' and unit == 'ffn'")
    assert curve.step.tolist() == [10, 20] and curve.value.tolist() == pytest.approx([9 / 17, 9 / 21])
    per_step, totals = dynamics_metrics(tables)
    assert per_step[20]["top_share.ffn"] == pytest.approx(9 / 21)
    assert totals["top_share.ffn.mean"] == pytest.approx((9 / 17 + 9 / 21) / 2)
    assert totals["top_share.ffn.early"] == pytest.approx(9 / 17)
    assert (
        "dynamics_layer_curves" not in tables or tables["dynamics_layer_curves"].metric.ne("top_share").all()
    )


def test_a_registered_per_layer_metric_gets_its_layer_tables(aggregates, scratch_registry):
    def gain_by_layer(scores_a, scores_b, top_frac):  # total positive |I| gain per layer  # [L]
        return np.maximum(0.0, np.abs(scores_b) - np.abs(scores_a)).sum(axis=-1)

    scratch_registry.register_metric(
        "gain_sum", input="pair", label="gain", unit="ratio", higher_is_better=None, aggregation="nanmean",
        description="d", paper_ref="-", per_layer=True,
    )(gain_by_layer)  # fmt: skip
    tables = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    curves = tables["dynamics_layer_curves"].query("metric == 'gain_sum' and unit == 'ffn'")
    by = {(r.layer, r.step): r.value for r in curves.itertuples()}
    # FFN above: 0 -> 10 gains [0,1,8,0,0] in layer 0, none in layer 1; 10 -> 20 none in layer 0, 4 in layer 1.
    assert by == {(0, 10): 9.0, (0, 20): 0.0, (1, 10): 0.0, (1, 20): 4.0}
    summary = tables["dynamics_layer_summary"].query("metric == 'gain_sum' and unit == 'ffn'")
    assert summary.set_index("layer").value.to_dict() == {0: 4.5, 1: 2.0}
    assert "gain_sum" not in set(tables["dynamics_summary"].metric)
    per_step, _ = dynamics_metrics(tables)
    assert per_step[20]["gain_sum.ffn.layer1"] == 4.0 and per_step[10]["gain_sum.attn.layer0"] == 0.0


# --- lagged pairs -------------------------------------------------------------------------------------------

# Expected overlap of two random 2-subsets, by hand: of 10 FFN neurons, P(share 1) = 2*8/45, P(share 2) = 1/45
# -> 16/45 * 1/3 + 1/45 = 19/135; of 8 ATTN neurons, P(1) = 12/28, P(2) = 1/28 -> 4/28 + 1/28 = 5/28.
RANDOM_FFN, RANDOM_ATTN = 19 / 135, 5 / 28


def test_lagged_pairs_compare_two_chosen_checkpoints_by_hand(aggregates, caplog):
    # FFN top-2 sets: step 0 {0, 1}, step 20 {1, 2} (|I| ranks 9 and 8) -> J = 1/3. ATTN is the same at
    # every step -> J = 1. Step 12 is nearest to 10, step 19 to 20; [0, 4] both match step 0: skipped.
    with caplog.at_level(logging.WARNING):
        table = lagged_overlaps(aggregates, [[0, 19], [12, 20], [0, 4]], top_frac=0.2)
    LaggedOverlap.check(table)
    assert "[0, 4]: both steps match checkpoint 0" in caplog.text
    assert set(table.metric) == {"j_lag"}
    ffn = table[table.unit == "ffn"]
    assert ffn[["requested_a", "requested_b", "step_a", "step_b"]].values.tolist() == [
        [0, 19, 0, 20],
        [12, 20, 10, 20],
    ]
    assert ffn.value.tolist() == pytest.approx([1 / 3, 1.0])  # step 10 {1, 2} vs step 20 {1, 2}
    assert table[table.unit == "attn"].value.tolist() == [1.0, 1.0]
    assert ffn.set_size.tolist() == [2, 2] and ffn.population.tolist() == [10, 10]
    assert ffn.random_baseline.tolist() == pytest.approx([RANDOM_FFN] * 2)
    assert lagged_metrics(table) == pytest.approx(
        {
            "j_lag.ffn.0_19": 1 / 3, "j_lag.attn.0_19": 1.0, "j_lag.ffn.12_20": 1.0, "j_lag.attn.12_20": 1.0,
            "j_lag.ffn.0_19.random": RANDOM_FFN, "j_lag.attn.0_19.random": RANDOM_ATTN,
            "j_lag.ffn.12_20.random": RANDOM_FFN, "j_lag.attn.12_20.random": RANDOM_ATTN,
        }
    )  # fmt: skip


def test_the_dynamics_stage_computes_the_configured_lagged_pairs_and_names_them(aggregates):
    tables = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2, lagged_pairs=[[0, 20]]))
    lagged = tables["dynamics_lagged"]
    assert lagged.set_index("unit").value.to_dict() == pytest.approx({"ffn": 1 / 3, "attn": 1.0})
    _, totals = dynamics_metrics(tables)
    assert totals["j_lag.ffn.0_20"] == pytest.approx(1 / 3)
    assert totals["j_lag.attn.0_20.random"] == pytest.approx(RANDOM_ATTN)
    assert "dynamics_lagged" not in compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2))


def test_a_registered_lagged_pair_metric_is_computed_on_every_configured_pair(aggregates, scratch_registry):
    def later_total(scores_a, scores_b, top_frac):  # total |I| at the later checkpoint
        return float(np.abs(np.asarray(scores_b)).sum())

    scratch_registry.register_metric(
        "later_total", input="lagged_pair", label="total", unit="ratio", higher_is_better=None,
        aggregation="none", description="d", paper_ref="-",
    )(later_total)  # fmt: skip
    tables = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2, lagged_pairs=[[0, 20]]))
    extra = tables["dynamics_lagged"].query("metric == 'later_total'").set_index("unit")
    assert extra.value.to_dict() == {"ffn": 21.0, "attn": 36.0}  # FFN at step 20: 9+8+1+1+2; ATTN: 1..8
    assert extra.random_baseline.isna().all()  # registered without a baseline
    _, totals = dynamics_metrics(tables)
    assert totals["later_total.ffn.0_20"] == 21.0


def test_the_lagged_overlap_of_consecutive_checkpoints_is_the_j_stab_curve(aggregates):
    curves, _ = _dynamics(aggregates, DynamicsConfig(top_frac=0.2))
    table = lagged_overlaps(aggregates, [[0, 10], [10, 20]], top_frac=0.2)
    j = curves[(curves.metric == "j_stab") & (curves.unit == "ffn")].value.tolist()
    assert table[table.unit == "ffn"].value.tolist() == pytest.approx(j)


def test_the_closed_form_random_overlap_matches_seeded_random_draws():
    """Monte-Carlo check of the closed form: 20,000 pairs of random 10-subsets of 200 neurons. The standard
    error of the mean Jaccard is about 0.0003 here, so 0.002 is > 5 standard errors."""
    n, k, draws = 200, 10, 20_000
    rng = np.random.default_rng(0)
    values = []
    for _ in range(draws):
        a, b = rng.choice(n, k, replace=False), rng.choice(n, k, replace=False)
        shared = np.intersect1d(a, b).size
        values.append(shared / (2 * k - shared))
    closed = random_overlap(np.zeros((2, 100)), np.zeros((2, 100)), top_frac=0.05)  # k = 10 of 200
    assert closed == pytest.approx(float(np.mean(values)), abs=0.002)
    assert closed == pytest.approx(0.05 / 2, rel=0.1)  # about top_frac / 2 for k << N
    assert random_overlap(np.zeros(4), np.zeros(4), top_frac=1.0) == 1.0  # every neuron: same set


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
