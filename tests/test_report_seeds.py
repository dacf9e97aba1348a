"""Report values combined over suite seeds: mean, sd over seeds, and the bootstrap interval of the mean."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gated_lpi_exp.metrics.bootstrap import example_weights, percentile_interval
from gated_lpi_exp.report.runs import RunData, make_columns
from gated_lpi_exp.report.seeds import drop_values, summary_value
from gated_lpi_exp.report.tables import Cell, Row


def _run(run_id: str, seed: int, tables: dict, start: int = 1) -> RunData:
    params = {"model.kind": "suite", "model.suite.seed": str(seed), "relations.names": "[]",
              "statistics.level": "0.9", "statistics.resamples": "50", "statistics.seed": "3"}  # fmt: skip
    info = SimpleNamespace(run_id=run_id, start_time=start, run_name=run_id)
    tags = {"gated_lpi.model": "small_moe", "gated_lpi.ablation": "top1_head"}
    return RunData(SimpleNamespace(info=info, data=SimpleNamespace(tags=tags, params=params)), tables=tables)


def _dynamics(value: float, replicates: np.ndarray) -> dict:
    summary = pd.DataFrame([dict(metric="j_stab", unit="ffn", window="all", value=value, n_checkpoints=5,
                                 ci_low=0.0, ci_high=1.0, baseline=0.005, baseline_empirical=0.0051)])  # fmt: skip
    reps = pd.DataFrame(
        dict(
            metric="j_stab", unit="ffn", window="all", replicate=np.arange(len(replicates)), value=replicates
        )
    )
    return {"dynamics_summary": summary, "dynamics_replicates": reps}


def test_seeds_of_one_suite_form_one_column_with_mean_sd_and_the_interval_of_the_mean():
    rng = np.random.default_rng(0)
    reps = [0.2 + 0.05 * rng.normal(size=50), 0.4 + 0.05 * rng.normal(size=50)]
    runs = [_run("a" * 32, 0, _dynamics(0.2, reps[0])), _run("b" * 32, 1, _dynamics(0.4, reps[1]), start=2)]
    (column,) = make_columns(runs)
    assert column.label == "small_moe" and column.seeds == ["0", "1"]
    combined = summary_value(column, "j_stab", "ffn", "all")
    assert combined.value == pytest.approx(0.3)
    assert combined.sd == pytest.approx(np.std([0.2, 0.4], ddof=1))
    low, high = percentile_interval((reps[0] + reps[1]) / 2, 0.9)
    assert combined.ci == (pytest.approx(low), pytest.approx(high))
    assert combined.baseline == pytest.approx(0.005) and combined.n_seeds == 2
    text = Row("J", "j_stab", [Cell.of(combined)], [], digits=1, scale=100).text(Cell.of(combined))
    assert text == f"30.0 [{100 * low:.1f}, {100 * high:.1f}] ± 14.1 sd (2 seeds) · random 0.5"


def _ablation_tables(base: list[int], targeted: list[int], random: list[int]) -> dict:
    keys = dict(relation=["r"] * len(base), sample_id=list(range(len(base))), step=10, ablation="top1_head")
    examples = pd.concat(
        [pd.DataFrame(keys | dict(condition=c, seed=s, hit_at_10=h))
         for c, s, h in (("base", -1, base), ("targeted", -1, targeted), ("random", 0, random))],
        ignore_index=True,
    )  # fmt: skip
    rows = []
    b = np.mean(base)
    for c, s, h in (("base", -1, base), ("targeted", -1, targeted), ("random", 0, random)):
        rows.append(dict(step=10, ablation="top1_head", condition=c, seed=s, n_units=1, hit_at_10=np.mean(h),
                         drop_percent=100 * (b - np.mean(h)) / b, heldout=False))  # fmt: skip
    return {"ablation": pd.DataFrame(rows), "ablation_examples": examples}


def test_drops_targeted_random_and_their_difference_with_paired_intervals():
    base, targeted, random = [1, 1, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0]
    (column,) = make_columns([_run("c" * 32, 0, _ablation_tables(base, targeted, random))])
    values = drop_values(column, "top1_head", min_base=0.5)
    assert values["targeted"].value == pytest.approx(75.0)
    assert values["random"].value == pytest.approx(25.0)
    assert values["difference"].value == pytest.approx(50.0)
    w = example_weights(["r"] * 5, list(range(5)), 50, seed=3)
    b, t, r = (w @ np.array(x, dtype=float) for x in (base, targeted, random))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(b > 0, 100 * (b - t) / b, np.nan) - np.where(b > 0, 100 * (b - r) / b, np.nan)
    low, high = percentile_interval(diff, 0.9)
    assert values["difference"].ci == (pytest.approx(low), pytest.approx(high))
    assert drop_values(column, "top1_head", min_base=0.9)["targeted"] is None  # base 0.8 < 0.9: no checkpoint


def test_every_selection_keeps_the_newest_run_of_each_suite_seed_and_the_seeds_form_one_column(tmp_path):
    from mlflow.tracking import MlflowClient

    from gated_lpi_exp.config import TrackingConfig
    from gated_lpi_exp.report.runs import load_run
    from gated_lpi_exp.report.sections import split_sections
    from gated_lpi_exp.report.select import select_runs
    from gated_lpi_exp.tracking.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts")))
    ids = {}
    for name, seed, sweep in (("old0", 0, "a"), ("seed1", 1, "a"), ("new0", 0, "b"), ("new1", 1, "b")):
        tags = {"gated_lpi.model": "small_moe", "gated_lpi.ablation": "top1_head", "gated_lpi.sweep": sweep}
        with tracker.run(name, tags=tags) as run_id:
            tracker.log_params({"model.kind": "suite", "model.suite.seed": seed})
        ids[name] = run_id
    client = MlflowClient(uri)
    newest = select_runs(client, "gated_lpi_exp", latest_per_model=True).runs
    assert {r.info.run_id for r in newest} == {ids["new0"], ids["new1"]}  # not one run per model and ablation
    latest_sweep = select_runs(client, "gated_lpi_exp").runs  # the default: the latest sweep, every seed
    assert {r.info.run_id for r in latest_sweep} == {ids["new0"], ids["new1"]}
    (section,) = split_sections([load_run(client, uri, r) for r in latest_sweep])
    (column,) = section.columns
    assert column.label == "small_moe" and column.seeds == ["0", "1"]
