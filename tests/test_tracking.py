"""The MLflow service: a local sqlite store, and a real `mlflow server` process on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.config import TrackingConfig
from gated_lpi_exp.errors import TrackingError
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
        assert [a.path for a in client.list_artifacts(run_id, "tables")] == ["tables/checkpoints.parquet"]
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
