"""End to end: a run over locally saved tiny checkpoints, checked through MlflowClient."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.data import load_relations
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.metrics import MIN_BASE_HIT10, metric_versions
from gated_lpi_exp.plots import FIGURES
from gated_lpi_exp.run import run
from gated_lpi_exp.suites.spec import PRESETS
from gated_lpi_exp.testing import save_random_series, word_tokenizer

STEPS = [0, 10, 30]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    samples = load_relations("bundled")
    words = sorted(
        {w for text in samples["prompt"].tolist() + samples["object"].tolist() for w in text.split()}
    )
    root = tmp_path_factory.mktemp("series")
    save_random_series(root, "olmoe", STEPS, word_tokenizer(words), name="random_moe")
    return root


def _cfg(series, tmp_path, *overrides):
    return compose_run_config(
        [
            "model=olmoe",
            "model.kind=local",
            f"model.source={series}",
            "model.name=random_moe",
            "model.dtype=float32",
            "model.device=cpu",
            "checkpoints=all",  # not the paper's grid and data, which model=olmoe brings in
            "relations.source=bundled",
            "relations.max_per_relation=4",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/mlruns",
            f"attribution.cache_dir={tmp_path}/cache",
            "progress=false",
            *overrides,
        ]
    )


def test_end_to_end_run_logs_everything_and_a_second_run_reuses_attribution(series, tmp_path, caplog):
    cfg = _cfg(
        series, tmp_path, "ablation=top1_head", "ablation.random_seeds=2", "dynamics.lagged_pairs=[[0,25]]"
    )
    result = run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["model.source"] == str(series) and params["run.n_checkpoints"] == "3"
    assert params["run.revisions"] == "step0,step10,step30"
    assert len(params["data.hash"]) >= 16 and params["package.version"]
    assert "package.git_commit" in params and params["attribution.norm"] == "frozen"
    # One word per object under this tokenizer: no object is scored on a first piece only.
    assert (
        params["data.multi_token_objects"] == "0"
        and params["data.multi_token_objects.country_language"] == "0"
    )
    assert params["model.n_heads_total"] == "8"
    assert params["run.step_mapping"] == "none"
    assert (params["data.n_duplicates"], params["data.n_conflicts"]) == ("0", "0")  # the bundled set is clean
    assert not any(k.startswith("model.suite.") for k in params)  # a local series has no suite recipe
    assert params["metrics.j_stab.version"] == "1" and params["ablation.label"] == "top-1 head"
    assert params["metrics.j_lag.version"] == "1"
    lagged = result.tables["dynamics_lagged"]  # 25 is matched to the analysed step 30
    assert lagged[["step_a", "step_b"]].drop_duplicates().values.tolist() == [[0, 30]]
    history = client.get_metric_history(result.run_id, "hit_at_10")
    assert sorted(m.step for m in history) == STEPS
    for name in (
        "hit_at_1",
        "hit_at_10.factual",
        "j_stab.ffn",
        "r_t_layer.attn.layer1",
        "ablation.hit_at_10.targeted",
        "j_lag.attn.0_25",
        "j_lag.attn.0_25.random",
    ):
        assert client.get_metric_history(result.run_id, name), name
    metrics = logged.data.metrics
    for name in ("hit_at_10", "j_stab.ffn.mean", "rho_avg.attn"):
        assert metrics[f"{name}.ci_low"] <= metrics[name] <= metrics[f"{name}.ci_high"], name
    # Random models never know the facts, so no drop (nor its interval) reaches MLflow; the ablation table
    # keeps every checkpoint's drop with its interval.
    ablation = result.tables["ablation"]
    assert (ablation.query("condition == 'base'")["hit_at_10"] < MIN_BASE_HIT10).all()
    assert not any(k.startswith("ablation.drop.") for k in metrics)
    assert ablation.query("condition != 'base'")[["drop_ci_low", "drop_ci_high"]].notna().any().all()
    assert metrics["j_stab.ffn.mean.baseline"] < 0.1 and params["statistics.method"] == "poisson_bootstrap"
    assert params["statistics.resamples"] == "200"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    for table in (
        "hit_summary",
        "example_hits",
        "checkpoints",
        "samples",
        "top_units",
        "layer_profiles",
        "dynamics_curves",
        "dynamics_summary",
        "dynamics_layer_curves",
        "dynamics_layer_summary",
        "ablation",
        "ablation_examples",
        "dynamics_replicates",
        "head_scores",
        "dynamics_lagged",
        "cleaning",
    ):
        assert {f"tables/{table}.parquet", f"tables/{table}.csv"} <= artifacts, table
    figures = {a.path for a in client.list_artifacts(result.run_id, "figures")}
    assert figures == {f"figures/{spec.stem}.png" for spec in FIGURES}
    assert client.list_artifacts(result.run_id, "config")[0].path == "config/resolved.yaml"
    assert {a.path for a in client.list_artifacts(result.run_id, "attribution")} == {
        f"attribution/step{s}.npz" for s in STEPS
    } | {"attribution/README.md"}  # what the arrays are, readable in the UI

    # The logged HIT@10 equals a recomputation from the logged per-example ranks.
    path = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="tables/example_hits.parquet", dst_path=str(tmp_path / "dl")
    )
    ranks = pd.read_parquet(path)
    expected = {s: float((g["gold_rank"] <= 10).mean()) for s, g in ranks.groupby("step")}
    assert {m.step: m.value for m in history} == pytest.approx(expected)

    caplog.clear()
    with caplog.at_level("INFO", logger="gated_lpi_exp"):
        # Another ablation setting (a new result entry), the same attribution inputs (cached per relation).
        second = run(_cfg(series, tmp_path, "tracking.run_name=again", "ablation=top1_head"))
    assert "attribution of 0 relations computed, 12 from cache" in caplog.text
    pd.testing.assert_frame_equal(second.tables["layer_profiles"], result.tables["layer_profiles"])


def test_failure_inside_the_run_ends_it_failed_with_what_was_logged(series, tmp_path):
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(series, broken)
    (broken / "step30" / "model.safetensors").write_bytes(b"truncated")
    cfg = _cfg(broken, tmp_path, "attribution.enabled=false")
    with pytest.raises(CheckpointError, match="step 30"):
        run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (failed,) = client.search_runs([exp.experiment_id])
    assert failed.info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(failed.info.run_id, "hit_at_10")) == [0, 10]


@pytest.fixture(scope="module")
def micro_suites(tmp_path_factory):
    """Project suites built (once per module) into a temporary cache, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATED_LPI_CACHE", str(tmp_path_factory.mktemp("suites")))
        yield


@pytest.mark.parametrize("suite", ["micro_moe", "micro_neox"])
def test_the_default_stages_on_a_micro_suite_exercise_every_stage(micro_suites, tmp_path, suite):
    """The default stages, end to end, on a MoE suite and on a second dense family (GPT-NeoX), with one
    head masked: the micro suites have 8 heads, all of which the default ``top10_heads`` would mask
    (refused before compute, see test_bad_input)."""
    cfg = compose_run_config(
        [
            f"model={suite}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "relations.max_per_relation=3",
            "ablation=top1_head",
            "progress=false",
        ]
    )
    assert cfg.ablation.name != "none" and cfg.attribution.enabled
    result = run(cfg)
    logged = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    params = logged.data.params
    # Resolved values, not the config's "0 = the size preset" placeholders.
    preset = PRESETS["micro"]
    for key in ("hidden_size", "num_layers", "steps", "num_checkpoints", "lr"):
        assert float(params[f"model.suite.{key}"]) == preset[key] != 0, key
    moe = suite == "micro_moe"
    assert ("model.suite.num_experts" in params) == moe  # a dense suite logs no expert fields
    assert params["attribution.cache_dir"] != "None" and "ablation.fraction" not in params  # a head ablation
    (dataset,) = logged.inputs.dataset_inputs
    assert dataset.dataset.digest == params["data.hash"] and dataset.dataset.name == "bundled:all"
    note = logged.data.tags["mlflow.note.content"]
    kind = "MoE" if moe else "dense"
    assert note.startswith(f"{suite} ({kind}, suite {suite}), 7 checkpoints (steps 0–240), on 36 examples")
    assert "top-1 head" in note and logged.data.tags["mlflow.source.name"] == "gated_lpi_exp"
    for table in ("hit_summary", "top_units", "layer_profiles", "dynamics_summary", "ablation"):
        assert len(result.tables[table]) > 0, table
    hits = result.tables["hit_summary"]
    # Intervals on every HIT@k and dynamics value, and random-set baselines beside the set metrics.
    summary = result.tables["dynamics_summary"].query("window == 'all'")
    assert hits[["ci_low", "ci_high"]].notna().all().all()
    assert ((hits["ci_low"] <= hits["hit"]) & (hits["hit"] <= hits["ci_high"])).all()
    assert summary.query("metric == 'j_stab'")["baseline"].notna().all()
    assert summary.query("metric == 'j_stab'")["baseline_empirical"].notna().all()
    assert summary.query("metric == 'r_t_pop' and unit == 'ffn'")[["ci_low", "ci_high"]].notna().all().all()
    # The ablation's base is the evaluation stage's HIT@10 at the same step (no held-out split here).
    base = result.tables["ablation"].query("condition == 'base'").set_index("step")["hit_at_10"]
    top10 = hits[(hits["scope"] == "overall") & (hits["k"] == 10)].set_index("step")["hit"]
    assert base.to_dict() == pytest.approx(top10.loc[base.index].to_dict())
    overall = hits[(hits["scope"] == "overall") & (hits["k"] == 10)].sort_values("step")["hit"].to_numpy()
    assert overall[-1] > overall[0]  # the micro suite learned

    # Params hold the values the suite was built with, not the "0 = the size preset" placeholders, and
    # the version of every registered metric.
    params = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.params
    micro = PRESETS["micro"]
    assert params["model.suite.steps"] == str(micro["steps"]) and params["model.suite.size"] == "micro"
    assert params["model.suite.hidden_size"] == str(micro["hidden_size"])
    assert params.get("model.suite.num_experts") == (str(micro["num_experts"]) if moe else None)
    assert params["model.suite.checkpoint_steps"] == str([c.step for c in result.checkpoints])
    assert {k: v for k, v in params.items() if k.startswith("metrics.")} == {
        f"metrics.{name}.version": str(version) for name, version in metric_versions().items()
    }


def test_an_ablation_preset_is_one_yaml_file_composed_and_run_on_a_micro_suite(micro_suites, tmp_path):
    """conf/ablation/top3_heads.yaml was added without a code change; it composes, runs and is named by it."""
    cfg = compose_run_config(
        [
            "model=micro_moe",
            "ablation=top3_heads",
            "ablation.random_seeds=1",
            "relations=factual",
            "relations.max_per_relation=4",
            "checkpoints=first_last",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "progress=false",
        ]
    )
    assert (cfg.ablation.unit, cfg.ablation.count, cfg.ablation.display_name) == ("head", 3, "top-3 heads")
    result = run(cfg)
    table = result.tables["ablation"]
    assert set(table["ablation"]) == {"top3_heads"} and len(table) == 2 * 3  # base, targeted, 1 random
    assert (table.query("condition != 'base'")["n_units"] == 3).all()
    logged = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    assert logged.info.run_name == "micro_moe-factual-top3_heads"
    assert logged.data.tags["gated_lpi.ablation"] == "top3_heads"
    assert logged.data.params["ablation.label"] == "top-3 heads"
