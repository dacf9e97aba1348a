"""Intervals and baselines inside the stages, each checked against a computation from per-example values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import AttributionConfig, DynamicsConfig, StatisticsConfig
from gated_lpi_exp.data import load_relations, select_relations
from gated_lpi_exp.metrics import jaccard_stability
from gated_lpi_exp.metrics.bootstrap import example_weights, percentile_interval
from gated_lpi_exp.stages.ablation import _condition_rows
from gated_lpi_exp.stages.attribution import attribute_checkpoint
from gated_lpi_exp.stages.dynamics import compute_dynamics
from gated_lpi_exp.stages.evaluation import summarise_hits
from gated_lpi_exp.testing import random_olmoe, word_tokenizer


def _samples():
    samples = load_relations("bundled")
    samples = select_relations(samples, names=["country_capital_city", "name_religion"])
    samples = samples.groupby("relation", sort=False).head(6).reset_index(drop=True)
    words = sorted({w for t in samples["prompt"].tolist() + samples["object"].tolist() for w in t.split()})
    tok = word_tokenizer(words)
    return samples, tok, random_olmoe(vocab_size=len(tok), seed=2)


def test_attribution_replicates_are_weighted_means_of_each_examples_own_scores(tmp_path):
    """Reference: every example scored alone, then Σ w s / Σ w with the example's own weights. Float32
    sums of a dozen scores: 1e-5 absolute is ~100x their rounding."""
    samples, tok, model = _samples()
    ckpt = Checkpoint(step=1, source="random-olmoe")
    stats = StatisticsConfig(resamples=9, seed=4)
    plain = AttributionConfig(batch_size=5, use_cache=False)
    out = attribute_checkpoint(model, tok, samples, ckpt, plain, statistics=stats)
    alone = [
        attribute_checkpoint(model, tok, samples.iloc[[i]], ckpt, plain).aggregate
        for i in range(len(samples))
    ]
    weights = example_weights(samples["relation"].tolist(), samples["sample_id"].tolist(), 9, seed=4)
    for kind in ("ffn", "attn", "ffn_layer", "attn_layer"):
        scores = np.stack([a.scores(kind) for a in alone])  # [n, ...]
        expected = np.einsum("rn,n...->r...", weights, scores) / weights.sum(axis=1).reshape(
            -1, *[1] * (scores.ndim - 1)
        )
        assert out.aggregate.replicates[kind].shape == (9, *scores.shape[1:])
        np.testing.assert_allclose(out.aggregate.replicates[kind], expected, atol=1e-5)

    cached = AttributionConfig(batch_size=5, cache_dir=str(tmp_path))
    first = attribute_checkpoint(model, tok, samples, ckpt, cached, statistics=stats)
    second = attribute_checkpoint(model, tok, samples, ckpt, cached, statistics=stats)
    assert second.computed_relations == 0
    np.testing.assert_array_equal(second.aggregate.replicates["ffn"], first.aggregate.replicates["ffn"])
    more = attribute_checkpoint(model, tok, samples, ckpt, cached, statistics=StatisticsConfig(resamples=3))
    assert more.aggregate.replicates["attn"].shape[0] == 3  # other replicates: recomputed, not mixed up
    off = attribute_checkpoint(model, tok, samples, ckpt, cached, statistics=StatisticsConfig(resamples=0))
    assert off.aggregate.replicates is None


def test_hit_intervals_come_from_each_groups_own_examples():
    hits = pd.DataFrame(
        dict(
            step=[5] * 6,
            relation=["a", "a", "a", "b", "b", "b"],
            category=["factual"] * 3 + ["bias"] * 3,
            sample_id=[0, 1, 2, 0, 1, 2],
            target_id=[1] * 6,
            gold_rank=[1, 3, 20, 1, 1, 50],
        )
    )
    stats = StatisticsConfig(resamples=400, seed=1, level=0.9)
    summary = summarise_hits(hits, [10], stats)
    weights = example_weights(hits["relation"].tolist(), hits["sample_id"].tolist(), 400, seed=1)
    hit = (hits["gold_rank"] <= 10).to_numpy(dtype=float)
    for group, cols in (("all", slice(0, 6)), ("a", slice(0, 3)), ("bias", slice(3, 6))):
        w = weights[:, cols]
        with np.errstate(invalid="ignore"):
            reps = np.where(w.sum(1) > 0, (w @ hit[cols]) / w.sum(1), np.nan)
        low, high = percentile_interval(reps, 0.9)
        row = summary[summary["group"] == group].iloc[0]
        assert row["hit"] == pytest.approx(hit[cols].mean())
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert row["ci_low"] <= row["hit"] <= row["ci_high"]
    assert summarise_hits(hits, [10])["ci_low"].isna().all()  # no statistics: no intervals


def test_drop_intervals_pair_each_example_with_itself():
    keys = dict(relation=["r"] * 4, sample_id=[0, 1, 2, 3], step=7, ablation="top1_head")
    base = pd.DataFrame(keys | dict(condition="base", seed=-1, hit_at_10=[1, 1, 1, 0]))
    targeted = pd.DataFrame(keys | dict(condition="targeted", seed=-1, hit_at_10=[0, 1, 0, 0]))
    rows = _condition_rows(pd.concat([base, targeted], ignore_index=True), 1, StatisticsConfig(resamples=300))
    row = rows[rows["condition"] == "targeted"].iloc[0]
    assert row["drop_percent"] == pytest.approx(100 * (0.75 - 0.25) / 0.75)
    w = example_weights(["r"] * 4, [0, 1, 2, 3], 300, seed=0)
    b, t = w @ np.array([1, 1, 1, 0]), w @ np.array([0, 1, 0, 0])  # weight totals cancel in the ratio
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(b > 0, 100 * (b - t) / b, np.nan)
    low, high = percentile_interval(reps, 0.95)
    assert (row["drop_ci_low"], row["drop_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert math.isnan(rows[rows["condition"] == "base"].iloc[0]["drop_ci_low"])


def _aggregate(step: int, ffn: np.ndarray, replicates: np.ndarray) -> CheckpointAggregate:
    """One layer of 10 FFN neurons; ATTN and layer profiles constant, with replicates."""
    n_reps = replicates.shape[0]
    attn, layer = np.arange(1.0, 11.0)[None, :], np.array([1.0, 2.0])
    return CheckpointAggregate(
        step=step, ffn=ffn[None, :], attn=attn, heads=np.zeros((1, 1)), ffn_layer=layer, attn_layer=layer,
        n_examples=3,
        replicates=dict(ffn=replicates[:, None, :], attn=np.repeat(attn[None], n_reps, 0),
                        ffn_layer=np.repeat(layer[None], n_reps, 0), attn_layer=np.repeat(layer[None], n_reps, 0)),
    )  # fmt: skip


def test_dynamics_intervals_recompute_the_metric_on_every_replicate():
    rng = np.random.default_rng(0)
    means = [rng.normal(size=10) for _ in range(3)]
    reps = [m + 0.5 * rng.normal(size=(40, 10)) for m in means]  # [R, N] per checkpoint
    aggregates = [_aggregate(s, m, r) for s, m, r in zip((0, 10, 20), means, reps, strict=True)]
    stats = StatisticsConfig(resamples=40, level=0.8, baseline_draws=3000)
    tables = compute_dynamics(aggregates, DynamicsConfig(top_frac=0.2), stats)
    curves, summary, replicates = (tables[f"dynamics_{k}"] for k in ("curves", "summary", "replicates"))
    per_rep = np.array([jaccard_stability(np.stack([rp[r] for rp in reps]), 0.2)[0] for r in range(40)])
    low, high = percentile_interval(per_rep, 0.8)
    row = summary[(summary.metric == "j_stab") & (summary.unit == "ffn") & (summary.window == "all")].iloc[0]
    assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert row.value == pytest.approx(jaccard_stability(np.stack(means), 0.2)[0])
    # N = 10, k = 2: E[J] = 1/45 * 1 + 16/45 * 1/3 = 19/135; 3,000 draws put the simulation within ~0.01.
    assert row.baseline == pytest.approx(19 / 135)
    assert row.baseline_empirical == pytest.approx(19 / 135, abs=0.015)
    rt = summary[(summary.metric == "r_t") & (summary.unit == "ffn") & (summary.window == "all")].iloc[0]
    assert rt.baseline == pytest.approx(0.2) and rt.baseline_empirical == pytest.approx(0.2, abs=0.02)
    attn = summary[(summary.metric == "j_stab") & (summary.unit == "attn")].iloc[0]
    assert attn.value == attn.ci_low == attn.ci_high == 1.0  # identical replicates: a point interval
    assert len(replicates[(replicates.metric == "j_stab") & (replicates.unit == "ffn")]) == 40
    defined = curves.dropna(subset=["ci_low"])
    assert len(defined) == 8 and (defined.ci_low <= defined.ci_high).all()  # ATTN R_t: no gain, undefined
    # The per-layer R_t gets its interval and baselines from the same registry hooks; with one FFN layer it
    # is R_t itself, replicate by replicate.
    layer = tables["dynamics_layer_summary"]
    one = layer[(layer.metric == "r_t_layer") & (layer.unit == "ffn") & (layer.window == "all")].iloc[0]
    assert (one.value, one.ci_low, one.ci_high) == pytest.approx((rt.value, rt.ci_low, rt.ci_high))
    assert one.baseline == pytest.approx(0.2) and one.baseline_empirical == pytest.approx(0.2, abs=0.02)


def test_the_logged_statistics_params_leave_out_the_level_when_intervals_are_off():
    from gated_lpi_exp.compose import compose_run_config
    from gated_lpi_exp.tracking.describe import resolved_params

    on = resolved_params(compose_run_config([]))
    assert on["statistics.level"] == 0.95 and on["statistics.resamples"] == 200
    off = resolved_params(compose_run_config(["statistics.resamples=0"]))
    assert "statistics.level" not in off  # no interval is computed, so no coverage to state
    assert off["statistics.seed"] == 0 and off["statistics.baseline_draws"] == 200  # baselines still drawn
