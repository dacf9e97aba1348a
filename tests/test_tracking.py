"""The MLflow service: a local sqlite store, and a real `mlflow server` process on 127.0.0.1."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import time
from contextlib import nullcontext

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.config import TrackingConfig
from gated_lpi_exp.errors import TrackingError
from gated_lpi_exp.tracking.names import EXPERIMENT_KIND_TAG, NOTE_TAG, PARENT_RUN_TAG, SWEEP_PARENT_TAG
from gated_lpi_exp.tracking.sweep import finish_parent, read_parents, sweep_parent
from gated_lpi_exp.tracking.tracker import Tracker, flatten, server_reachable


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_local_store_run_params_metrics_tables(tmp_path):
    cfg = TrackingConfig(
        uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "art"), experiment="t"
    )
    tracker = Tracker(cfg)
    with tracker.run("r1", tags={"k": "v"}) as run_id:
        tracker.log_params({"a.b": 1, "long": "x" * 7000})
        tracker.log_metrics({"hit_at_10": 0.5, "nan_metric": float("nan")}, step=7)
        tracker.log_table(pd.DataFrame({"x": [1, 2]}), "tiny")
    client = MlflowClient(cfg.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["k"] == "v"
    assert run.data.params["a.b"] == "1" and run.data.params["long"].endswith("[cut]")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "hit_at_10")] == [(7, 0.5)]
    assert "nan_metric" not in run.data.metrics
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="tables/tiny.parquet", dst_path=str(tmp_path / "dl")
    )
    assert pd.read_parquet(local)["x"].tolist() == [1, 2]
    assert (tmp_path / "art").is_dir()


def test_a_failing_body_ends_the_run_failed_keeping_what_was_logged(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "art"))
    tracker = Tracker(cfg)
    with pytest.raises(RuntimeError), tracker.run("boom") as run_id:
        tracker.log_metrics({"hit_at_1": 0.25}, step=0)
        raise RuntimeError("stage failed")
    run = MlflowClient(cfg.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics["hit_at_1"] == 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_before_compute_or_falls_back(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TrackingError, match="on_unreachable=local"):
        Tracker(TrackingConfig(uri=uri))
    tracker = Tracker(TrackingConfig(uri=uri, on_unreachable="local"))
    assert tracker.uri == "sqlite:///mlflow.db"


@pytest.mark.slow
def test_full_run_logged_over_http_to_a_real_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "srv-art"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while not server_reachable(uri, timeout=1.0):
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.5)
        tracker = Tracker(TrackingConfig(uri=uri, experiment="over_http"))
        with tracker.run("http-run") as run_id:
            tracker.log_params({"model.name": "tiny"})
            for step, v in [(0, 0.1), (10, 0.6)]:
                tracker.log_metrics({"hit_at_10": v}, step=step)
            tracker.log_table(pd.DataFrame({"step": [0, 10]}), "checkpoints")
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["model.name"] == "tiny"
        assert [m.value for m in client.get_metric_history(run_id, "hit_at_10")] == [0.1, 0.6]
        assert [a.path for a in client.list_artifacts(run_id, "tables")] == [
            "tables/checkpoints.csv",
            "tables/checkpoints.parquet",
        ]
        assert any((tmp_path / "srv-art").rglob("checkpoints.parquet"))
        _full_run_over_http(uri, tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _full_run_over_http(uri: str, tmp_path) -> None:
    """run.py end to end on a tiny local series, logged to the server, read back with MlflowClient."""
    from scale_helpers import STEPS, make_series, overrides

    from gated_lpi_exp.compose import compose_run_config
    from gated_lpi_exp.run import run

    args = [a for a in overrides(make_series(tmp_path / "series"), tmp_path) if not a.startswith("tracking.")]
    cfg = compose_run_config([*args, f"tracking.uri={uri}", "tracking.experiment=full_over_http"])
    result = run(cfg)
    client = MlflowClient(uri)
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED" and logged.data.params["run.n_checkpoints"] == str(len(STEPS))
    for name in ("hit_at_10", "importance.ffn_layer.mean", "j_stab.ffn"):
        steps = [m.step for m in client.get_metric_history(result.run_id, name)]
        assert steps and set(steps) <= set(STEPS), name
    assert logged.data.metrics["final.hit_at_10"] == result.metrics["hit_at_10"]
    tables = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert {f"tables/{t}.parquet" for t in result.tables} <= tables
    for table in ("layer_profiles", "dynamics_summary"):
        local = mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path=f"tables/{table}.parquet", dst_path=str(tmp_path / "dl")
        )
        pd.testing.assert_frame_equal(pd.read_parquet(local), result.tables[table].reset_index(drop=True))
    assert {a.path for a in client.list_artifacts(result.run_id, "figures")} >= {"figures/fig1_jaccard.png"}


def test_the_experiment_is_set_up_for_model_development_and_keeps_it(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "art"))
    tracker = Tracker(cfg)
    with tracker.run("r") as run_id:
        tracker.log_metrics({"hit_at_10": 0.5}, step=0)
        tracker.log_dataset(pd.DataFrame({"prompt": ["a"]}), "bundled:all", "0123abcd", str(tmp_path))
    Tracker(cfg)  # a later run opens the same experiment
    tags = MlflowClient(cfg.uri).get_experiment(tracker.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development" and "fractions" in tags[NOTE_TAG]
    # A kind a user chose on purpose (in the UI or with set_experiment_tag) is left alone.
    MlflowClient(cfg.uri).set_experiment_tag(tracker.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    Tracker(cfg)
    assert (
        MlflowClient(cfg.uri).get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"
    )
    (dataset,) = MlflowClient(cfg.uri).get_run(run_id).inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("bundled:all", "0123abcd")
    assert dataset.tags[0].value == "evaluation"


def test_every_table_is_also_a_csv_the_ui_shows(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "art"))
    tracker = Tracker(cfg)
    table = pd.DataFrame({"step": [0, 10], "hit": [0.25, 0.5], "relation": ["a,b", 'say "x"']})
    with tracker.run("r") as run_id:
        tracker.log_table(table, "hits")
    client = MlflowClient(cfg.uri)
    assert {a.path for a in client.list_artifacts(run_id, "tables")} == {
        "tables/hits.parquet",
        "tables/hits.csv",
    }
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="tables/hits.csv", dst_path=str(tmp_path / "dl"), tracking_uri=cfg.uri
    )
    pd.testing.assert_frame_equal(pd.read_csv(local), table)


def _ask_for_parent(uri: str, artifacts: str, sweep_dir: str, queue) -> None:
    """One job of a sweep in its own process: open the tracker, find or create the sweep's parent run."""
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=artifacts))
    queue.put(sweep_parent(tracker, sweep_dir))


def test_jobs_in_separate_processes_find_one_parent_run_and_it_ends_by_its_children(tmp_path):
    uri, artifacts, folder = f"sqlite:///{tmp_path}/m.db", str(tmp_path / "art"), tmp_path / "multirun" / "a"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    jobs = [ctx.Process(target=_ask_for_parent, args=(uri, artifacts, str(folder), queue)) for _ in range(3)]
    for job in jobs:
        job.start()
    ids = {queue.get(timeout=180) for _ in jobs}
    for job in jobs:
        job.join(timeout=60)
    (parent_id,) = ids
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gated_lpi_exp").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [parent_id]
    (recorded,) = read_parents(folder)
    assert recorded.run_id == parent_id and recorded.sweep_id == parent_id[:8]

    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=artifacts))
    for fail in (False, True):
        with (
            pytest.raises(RuntimeError) if fail else nullcontext(),
            tracker.run("job", parent_run_id=parent_id),
        ):
            if fail:
                raise RuntimeError("a job failed")
    runs = client.search_runs([experiment], f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert finish_parent(recorded) == "FAILED"  # not every job finished
    assert client.get_run(parent_id).data.tags[SWEEP_PARENT_TAG] == "1"
