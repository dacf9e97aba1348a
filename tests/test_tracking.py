"""The MLflow service: a local sqlite store, and a real `mlflow server` process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import nullcontext

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.config import TrackingConfig
from gated_lpi_exp.errors import TrackingError
from gated_lpi_exp.tracking.names import EXPERIMENT_KIND_TAG, NOTE_TAG, PARENT_RUN_TAG, SWEEP_PARENT_TAG
from gated_lpi_exp.tracking.spool import Spool, replay
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


def test_a_point_the_server_stored_before_it_stopped_answering_is_not_doubled_by_the_replay(tmp_path):
    """A call can reach the server and still time out on the way back: it is spooled with the timestamp it
    carried, so its replay is the same point and MLflow keeps it once; a new point at another time is added."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = client.create_run(client.create_experiment("spool", str(tmp_path / "art"))).info.run_id
    client.log_batch(run_id, metrics=[mlflow.entities.Metric("hit_at_10", 0.5, 1_000, 0)])  # stored ...
    spool = Spool(tmp_path / "spool")
    spool.metrics({"hit_at_10": 0.5}, 0, time_ms=1_000)  # ... and kept, since no answer came
    spool.metrics({"hit_at_10": 0.75}, 10, time_ms=2_000)
    assert replay(tmp_path / "spool", client, run_id) == 2
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "hit_at_10"))
    assert history == [(0, 0.5), (10, 0.75)]


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


def _start_server(tmp_path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` with its store under ``tmp_path`` (reused on restart)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
         str(tmp_path / "srv-art"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300  # a loaded 2-core machine takes minutes to import and migrate
    while not server_reachable(f"http://127.0.0.1:{port}", timeout=1.0):
        assert server.poll() is None, "mlflow server exited"
        assert time.time() < deadline, "mlflow server did not come up in 300 s"
        time.sleep(0.5)
    _wait_until_the_stores_answer(f"http://127.0.0.1:{port}", server, deadline)
    return server


def _wait_until_the_stores_answer(uri: str, server: subprocess.Popen, deadline: float) -> None:
    """One real request to the tracking store and one to the artifact store, with a long timeout: a fresh
    server opens its stores on their first request, which on a loaded machine can take longer than the
    seconds the timed parts of the tests allow (``/health`` answers before that)."""
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow-artifacts/artifacts"):
        while True:
            assert server.poll() is None, "mlflow server exited"
            try:
                with urllib.request.urlopen(uri + path, timeout=120) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.time() < deadline, f"mlflow server did not answer {path} in 300 s"
            time.sleep(0.5)


def _signal(server: subprocess.Popen, sig: int) -> None:
    """Signal the server and the uvicorn worker it starts (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, sig)


def _stop(server: subprocess.Popen) -> None:
    _signal(server, signal.SIGCONT)
    _signal(server, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _signal(server, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
def test_full_run_logged_over_http_to_a_real_mlflow_server(tmp_path):
    port = _free_port()
    server = _start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    try:
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
        _stop(server)


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


def _hung_server_spools_then_replays(uri: str, server: subprocess.Popen, tmp_path) -> None:
    """A server that stops answering mid-run (SIGSTOP) costs ``timeout_s``; what is logged meanwhile is
    spooled, and replayed into the run when the server answers again before the run ends."""
    tracker = Tracker(TrackingConfig(uri=uri, experiment="hung", timeout_s=5), spool_root=tmp_path / "spool")
    with tracker.run("hung-run") as run_id:
        tracker.log_metrics({"hit_at_10": 0.1}, step=0)
        _signal(server, signal.SIGSTOP)
        started = time.monotonic()
        tracker.log_metrics({"hit_at_10": 0.2}, step=10)
        tracker.log_table(pd.DataFrame({"step": [0, 10]}), "checkpoints")
        assert tracker.degraded and time.monotonic() - started < 20  # 5 s budget, on a busy machine
        assert (tmp_path / "spool" / run_id / "calls.jsonl").is_file()
        _signal(server, signal.SIGCONT)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "hit_at_10")] == [0.1, 0.2]
    assert [a.path for a in client.list_artifacts(run_id, "tables")] == [
        "tables/checkpoints.csv",
        "tables/checkpoints.parquet",
    ]
    assert not (tmp_path / "spool" / run_id).exists()


def _finished_steps(state_dir) -> set[int]:
    for path in state_dir.glob("*.json"):
        try:
            return {int(s) for s in json.loads(path.read_text())["checkpoints"]}
        except (json.JSONDecodeError, KeyError):
            pass
    return set()


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_costs_seconds_and_the_next_run_completes_the_record(tmp_path):
    """The issue's scenario with a real server: killed mid-run, the run ends within a minute with one
    message (exit 2), every checkpoint in the result store; with the server back, the same command reuses
    them all, logs a complete run, replays the spool into the orphaned run and ends it FAILED."""
    from scale_helpers import CLI, STEPS, cli_env, make_series, overrides, result_store, run_cli

    from gated_lpi_exp.checkpoints.loading import resolve_series
    from gated_lpi_exp.compose import compose_run_config

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    try:
        _hung_server_spools_then_replays(uri, server, tmp_path)
        work = tmp_path / "work"
        plain = [
            a for a in overrides(make_series(tmp_path / "series"), work) if not a.startswith("tracking.")
        ]
        args = [*plain, f"tracking.uri={uri}", "tracking.experiment=killed", "tracking.timeout_s=5",
                "relations=all"]  # fmt: skip
        proc = subprocess.Popen([*CLI, *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.time() + 240
        while not _finished_steps(work / "cache" / "runs"):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "no checkpoint finished in 240 s"
            time.sleep(0.05)
        _signal(server, signal.SIGKILL)
        server.wait(timeout=30)
        killed_at = time.monotonic()
        output = proc.communicate(timeout=120)[0]
        assert time.monotonic() - killed_at < 60, "a dead tracking server held the run for a minute or more"
        assert proc.returncode == 2, output[-3000:]
        assert "Traceback" not in output
        assert "stopped answering" in output and "Everything computed is in the result store" in output
        cfg = compose_run_config(args)
        store = result_store(cfg)
        assert all(store.path(c).is_file() for c in resolve_series(cfg.model, cfg.checkpoints).checkpoints)

        server = _start_server(tmp_path, port)
        again = run_cli(args, cwd=tmp_path)
        assert again.returncode == 0, again.stdout[-3000:]
        client, runs = (
            MlflowClient(uri),
            MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("killed").experiment_id]),
        )
        (new,) = [r for r in runs if r.info.status == "FINISHED"]
        (orphan,) = [r for r in runs if r.info.run_id != new.info.run_id]
        assert orphan.info.status == "FAILED" and orphan.data.tags["gated_lpi.resumed_by"] == new.info.run_id
        assert new.data.tags["gated_lpi.resumed_from"] == orphan.info.run_id
        assert new.data.metrics["resume.n_reused"] == len(STEPS)  # nothing recomputed
        assert sorted(m.step for m in client.get_metric_history(new.info.run_id, "hit_at_10")) == STEPS
        replayed = sorted(m.step for m in client.get_metric_history(orphan.info.run_id, "hit_at_10"))
        assert replayed == STEPS  # logged live before the kill, or kept in the spool and replayed
        assert not (work / "cache" / "spool" / orphan.info.run_id).exists()
    finally:
        _stop(server)


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
