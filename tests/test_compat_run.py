"""A whole run with ``attribution.compat=released_code``: every stage scored that way, and said so."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.data import load_relations
from gated_lpi_exp.report import main as report_main
from gated_lpi_exp.report.render import md_escape
from gated_lpi_exp.run import run
from gated_lpi_exp.testing import save_random_series, word_tokenizer


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    samples = load_relations("bundled")
    words = sorted(
        {w for text in samples["prompt"].tolist() + samples["object"].tolist() for w in text.split()}
    )
    root = tmp_path_factory.mktemp("series")
    save_random_series(root, "olmoe", [0, 10], word_tokenizer(words), name="random_moe")
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
            "relations.max_per_relation=2",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/mlruns",
            f"attribution.cache_dir={tmp_path}/cache",
            "progress=false",
            *overrides,
        ]
    )


@pytest.mark.slow
def test_a_released_code_run_is_scored_apart_and_says_so_in_params_tags_and_report(series, tmp_path, caplog):
    default = run(_cfg(series, tmp_path, "ablation=none"))
    with caplog.at_level("INFO", logger="gated_lpi_exp"):
        compat = run(
            _cfg(
                series,
                tmp_path,
                "attribution.compat=released_code",
                "ablation=top1_head",
                "ablation.random_seeds=1",
            )
        )
    # Its own cache entries: nothing is taken from the causal run's attribution.
    assert "attribution of 12 relations computed, 0 from cache" in caplog.text
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    logged = client.get_run(compat.run_id)
    params, tags = logged.data.params, logged.data.tags
    assert params["attribution.compat"] == "released_code" and params["attribution.attn_positions"] == "True"
    assert "not a causal language model" in params["run.scoring"] and "1e-06" in params["run.scoring"]
    assert tags["gated_lpi.compat"] == "released_code"
    assert client.get_run(default.run_id).data.params["run.scoring"].startswith("causal language model")
    # HIT@k also runs without the causal mask: some gold ranks move.
    ranks = [
        r.tables["example_hits"].set_index(["step", "sample_id"])["gold_rank"] for r in (default, compat)
    ]
    assert not ranks[0].equals(ranks[1])
    assert len(compat.tables["ablation"]) > 0

    out = tmp_path / "report"
    assert report_main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # report.md escapes Markdown punctuation in every value (released\_code renders as released_code).
    assert md_escape(f"(run {compat.run_id}) was scored with attribution.compat=released_code") in md
    assert f"(run {default.run_id}) was scored" not in md
    assert "was scored with attribution.compat=released_code" in (out / "report.html").read_text()
