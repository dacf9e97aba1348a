"""The findings section: each claim judged on a MoE/dense pair from paired bootstrap replicates and the suite
seeds, and each finding's verdict from its claims."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gated_lpi_exp.metrics.bootstrap import percentile_interval
from gated_lpi_exp.report.findings import (
    AS_PREDICTED,
    CLAIMS,
    OPPOSITE,
    UNCLEAR,
    UNTESTABLE,
    Claim,
    Judged,
    findings_table,
    judge,
    verdict,
)
from gated_lpi_exp.report.runs import RunData, make_columns
from gated_lpi_exp.report.seeds import Combined

HIGHER = Claim("backbone", "j_stab", "ffn")


def _combined(per_seed: list[float], replicates: np.ndarray | None) -> Combined:
    return Combined(float(np.mean(per_seed)), n_seeds=len(per_seed), per_seed=per_seed, replicates=replicates)


def test_a_difference_whose_interval_excludes_zero_on_every_seed_pair_is_as_predicted():
    rng = np.random.default_rng(1)
    moe_reps, dense_reps = 0.5 + 0.01 * rng.normal(size=200), 0.2 + 0.01 * rng.normal(size=200)
    judged = judge(HIGHER, _combined([0.45, 0.55], moe_reps), _combined([0.15, 0.25], dense_reps), 0.95)
    low, high = percentile_interval(moe_reps - dense_reps, 0.95)  # paired: replicate r minus replicate r
    assert judged.ci == (pytest.approx(float(low)), pytest.approx(float(high))) and judged.ci[0] > 0
    assert judged.difference == pytest.approx(0.3)
    assert judged.seeds == "4 of 4 seed pairs as predicted" and judged.outcome == AS_PREDICTED


def test_seeds_that_overlap_leave_no_clear_difference_even_with_a_tight_interval():
    constant = np.full(100, 0.1)
    judged = judge(HIGHER, _combined([0.5, 0.2], constant + 0.1), _combined([0.3, 0.1], constant), 0.95)
    assert judged.ci == (pytest.approx(0.1), pytest.approx(0.1))  # excludes 0 ...
    assert judged.seeds == "3 of 4 seed pairs as predicted"  # ... but 0.2 < 0.3
    assert judged.outcome == UNCLEAR


def test_a_lower_is_predicted_claim_reads_its_sign_the_other_way():
    lower = Claim("robustness", "drop_percent", ablation="top10_heads", moe_higher=False)
    moe, dense = _combined([10.0, 12.0], np.full(50, 11.0)), _combined([50.0, 55.0], np.full(50, 52.0))
    assert judge(lower, moe, dense, 0.95).outcome == AS_PREDICTED
    assert judge(lower, dense, moe, 0.95).outcome == OPPOSITE
    assert judge(HIGHER, moe, dense, 0.95).outcome == OPPOSITE


def test_missing_or_undefined_values_are_not_testable_and_no_interval_is_no_clear_difference():
    value = _combined([0.3], np.full(10, 0.3))
    assert judge(HIGHER, None, value, 0.95).outcome == UNTESTABLE
    assert judge(HIGHER, value, Combined(float("nan")), 0.95).outcome == UNTESTABLE
    assert judge(HIGHER, _combined([0.5], None), value, 0.95).outcome == UNCLEAR


@pytest.mark.parametrize(
    "outcomes, expected",
    [
        ([AS_PREDICTED, AS_PREDICTED], ("reproduced", "2 of 2")),
        ([AS_PREDICTED, UNCLEAR], ("partly reproduced", "1 of 2")),
        ([OPPOSITE, UNCLEAR], ("not reproduced", "0 of 2")),
        ([AS_PREDICTED, UNTESTABLE], ("partly reproduced", "1 of 2 (1 not testable)")),
        ([UNTESTABLE, UNTESTABLE], ("not testable", "0 of 2 (2 not testable)")),
    ],
)
def test_a_finding_is_reproduced_only_when_every_claim_is_as_predicted(outcomes, expected):
    assert verdict([Judged(HIGHER, None, None, outcome=o) for o in outcomes]) == expected


def _run(run_id: str, model: str, family: str, seed: int, j_stab: float, reps: np.ndarray) -> RunData:
    params = {"model.kind": "suite", "model.suite.seed": str(seed), "statistics.level": "0.95"}
    info = SimpleNamespace(run_id=run_id, start_time=seed + 1, run_name=run_id)
    tags = {"gated_lpi.model": model, "gated_lpi.family": family, "gated_lpi.ablation": "top1_head"}
    summary = pd.DataFrame([dict(metric="j_stab", unit="ffn", window="all", value=j_stab, n_checkpoints=5,
                                 ci_low=0.0, ci_high=1.0, baseline=0.005)])  # fmt: skip
    replicates = pd.DataFrame(
        dict(metric="j_stab", unit="ffn", window="all", replicate=np.arange(len(reps)), value=reps)
    )
    tables = {"dynamics_summary": summary, "dynamics_replicates": replicates}
    return RunData(SimpleNamespace(info=info, data=SimpleNamespace(tags=tags, params=params)), tables=tables)


def test_the_table_pairs_each_moe_column_with_each_dense_column_over_their_seeds():
    runs = [
        _run(f"{i}" * 32, model, family, seed, value, np.full(40, value))
        for i, (model, family, seed, value) in enumerate(
            [
                ("small_moe", "olmoe", 0, 0.40),
                ("small_moe", "olmoe", 1, 0.50),
                ("small_dense", "olmo", 0, 0.20),
                ("small_dense", "olmo", 1, 0.30),
            ]  # fmt: skip
        )
    ]
    table = findings_table(make_columns(runs), min_base=0.5)
    assert table is not None
    j_stab = next(line for line in table.lines if line[1].startswith("J_stab FFN (%)"))
    assert "small_moe vs small_dense" in j_stab[1]
    assert j_stab[2].startswith("45.0 [45.0, 45.0] ± 7.1 sd (2 seeds)") and j_stab[3].startswith("25.0")
    assert j_stab[4] == "+20.0 [+20.0, +20.0]" and j_stab[5] == "4 of 4 seed pairs as predicted"
    assert j_stab[6] == AS_PREDICTED
    ablation = next(line for line in table.lines if line[1].startswith("top10_heads"))
    assert ablation[2] == "ablation not run" and ablation[6] == UNTESTABLE
    backbone = next(v for v in table.verdicts if v[0] == "Low-entropy MoE backbone")
    assert backbone[1:] == ["small_moe vs small_dense", "partly reproduced", "1 of 2 (1 not testable)"]
    assert len(table.lines) == len(CLAIMS)
    assert findings_table([c for c in make_columns(runs) if c.label == "small_moe"], 0.5) is None
