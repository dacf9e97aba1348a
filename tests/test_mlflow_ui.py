"""What the MLflow UI shows after a real ``-m`` sweep of the command line, read through the REST API of a real
``mlflow server`` on loopback, as the UI reads it: one parent run with the jobs nested under it, each job's
examples as a dataset input, a previewable copy of every table, resolved params, and the experiment set up
for model training. Then the report of that sweep, named by its relative folder."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from scale_helpers import make_series, overrides, run_cli
from ui_helpers import api, artifact, mlflow_server

from gated_lpi_exp.report import main as report_main
from gated_lpi_exp.tracking.names import EXPERIMENT_KIND, SAVED_VIEW_TAG

PREVIEWED = (".csv", ".json", ".md", ".txt", ".yaml", ".html", ".png")
"""Files the MLflow UI's artifact view renders (3.17: text, tables, images, HTML)."""


def _tags(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


def _files(url: str, run_id: str, path: str = "") -> list[str]:
    listed = api(url, "artifacts/list", run_id=run_id, path=path).get("files", [])
    out = []
    for f in listed:
        out += _files(url, run_id, f["path"]) if f["is_dir"] else [f["path"]]
    return out


@pytest.mark.slow
def test_a_sweep_as_the_mlflow_ui_shows_it(tmp_path):
    series = make_series(tmp_path / "series", steps=[0, 10, 20])
    args = overrides(
        series, tmp_path, "ablation=top1_head", "ablation.random_seeds=1", "relations=linguistic,factual"
    )
    done = run_cli(["-m", *args], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    relative = str(sweep_dir.relative_to(tmp_path))
    assert f"compare: python -m gated_lpi_exp.report --sweep {relative}" in done.stdout

    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", tmp_path) as url:
        experiment = api(url, "experiments/get-by-name", experiment_name="gated_lpi_exp")["experiment"]
        tags = _tags(experiment)
        assert tags["mlflow.experimentKind"] == EXPERIMENT_KIND
        view = json.loads(tags[SAVED_VIEW_TAG])
        assert "metrics.`final.hit_at_10`" in json.loads(view["state"])["selectedColumns"]
        runs = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        parents = [r for r in runs if _tags(r["data"]).get("gated_lpi.sweep_parent") == "1"]
        assert len(runs) == 3 and len(parents) == 1
        parent = parents[0]["info"]["run_id"]
        jobs = [r for r in runs if r["info"]["run_id"] != parent]
        assert all(_tags(r["data"])["mlflow.parentRunId"] == parent for r in jobs)
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
        assert f"Sweep {parent[:8]} ({relative}): 2 of 2 runs finished" in done.stdout

        for job in jobs:
            run_id = job["info"]["run_id"]
            params = {p["key"]: p["value"] for p in job["data"]["params"]}
            (dataset,) = job["inputs"]["dataset_inputs"]
            assert dataset["dataset"]["digest"] == params["data.hash"]
            assert dataset["dataset"]["name"] in ("bundled:linguistic", "bundled:factual")
            assert "ablation.fraction" not in params and not any(k.startswith("model.suite.") for k in params)
            assert "None" not in (params["attribution.cache_dir"], params["execution.result_dir"])
            assert _tags(job["data"])["mlflow.note.content"].startswith("random (dense, local ")
            files = _files(url, run_id)
            tables = [f for f in files if f.startswith("tables/") and f.endswith(".parquet")]
            assert len(tables) >= 9
            for table in tables:  # every table has a copy the UI previews, with the same rows
                csv = pd.read_csv(io.BytesIO(artifact(url, run_id, table.replace(".parquet", ".csv"))))
                assert len(csv) == len(pd.read_parquet(io.BytesIO(artifact(url, run_id, table)))), table
            arrays = [f for f in files if f.endswith(".npz")]
            assert arrays and "attribution/README.md" in files  # the arrays explained where they are listed
            assert {f for f in files if f.startswith("figures/")} and all(
                f.endswith(PREVIEWED) for f in files if not f.endswith((".parquet", ".npz"))
            )
        parent_files = _files(url, parent)
        assert {"config/multirun.yaml", "report/report.html", "report/report.md"} <= set(parent_files)
        assert b"Gated-LPI report" in artifact(url, parent, "report/report.html")

    # The report of that sweep, named by its folder relative to here (as the sweep printed it).
    out = tmp_path / "report"
    assert (
        report_main(
            ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--sweep", relative, "--out", str(out)]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    assert all(r["info"]["run_id"] in md for r in jobs) and "## Section 1 of 2" in md
