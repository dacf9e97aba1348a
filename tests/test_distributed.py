"""Scale-out: one run split over 2 real processes, and a submitit sweep whose jobs share the attribution."""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from scale_helpers import STEPS, assert_same_numbers, make_series, overrides, run_cli, runs_of

from gated_lpi_exp.compose import CONF_DIR, compose_run_config, prepare_hydra
from gated_lpi_exp.execution.process_group import ProcessGroup
from gated_lpi_exp.run import run


def _accelerate() -> list[str]:
    """``accelerate launch`` spawning 2 processes; on a machine without GPUs they use the CPU and gloo."""
    with socket.socket() as s:  # a free rendezvous port: other test sessions may share this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "gated_lpi_exp",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return make_series(tmp_path_factory.mktemp("series"))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CLI processes run with OMP_NUM_THREADS=1: the same arithmetic
    yield
    torch.set_num_threads(threads)


def test_shards_cover_every_checkpoint_once():
    items = list(range(7))
    for how in ("round_robin", "contiguous"):
        plan = ProcessGroup(0, 3).plan(items, how)
        assert sorted(sum(plan, [])) == items and [len(p) for p in plan] == [3, 2, 2]
    assert ProcessGroup(1, 3).shard(items) == [1, 4]
    assert ProcessGroup(1, 3).shard(items, "contiguous") == [3, 4]
    assert ProcessGroup(4, 5).shard([1, 2]) == []


def test_two_processes_log_one_run_with_the_numbers_of_one_process(series, tmp_path):
    args = overrides(series, tmp_path / "multi", "ablation=top1_head", "ablation.random_seeds=1")
    done = run_cli(args, cwd=tmp_path, launcher=_accelerate())
    assert done.returncode == 0, done.stdout[-3000:]
    assert "process 0 of 2" in done.stdout and "process 1 of 2" in done.stdout
    uri = f"sqlite:///{tmp_path}/multi/mlflow.db"
    client, runs = runs_of(uri)
    (multi,) = runs  # one MLflow run, from process 0
    assert multi.info.status == "FINISHED"
    assert multi.data.params["run.processes"] == "2"
    assert multi.data.params["run.assignment"] == "0: 0,20; 1: 10,30"  # round robin
    state = json.loads(next((tmp_path / "multi" / "cache" / "runs").glob("*.json")).read_text())
    assert {int(s): c["rank"] for s, c in state["checkpoints"].items()} == {0: 0, 10: 1, 20: 0, 30: 1}
    assert sorted(m.step for m in client.get_metric_history(multi.info.run_id, "hit_at_10")) == STEPS

    single_cfg = compose_run_config(
        overrides(series, tmp_path / "single", "ablation=top1_head", "ablation.random_seeds=1")
    )
    single = run(single_cfg)
    assert_same_numbers(single_cfg.tracking.uri, single.run_id, uri, multi.info.run_id, tmp_path / "dl")


def test_submitit_sweep_jobs_share_the_attribution(series, tmp_path):
    args = overrides(
        series,
        tmp_path,
        "hydra/launcher=local",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "ablation=top1_head,top1pct_ffn",
        "ablation.random_seeds=1",
        "checkpoints.limit=3",
    )
    done = run_cli(["-m", *args], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    client, runs = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["gated_lpi.ablation"] for r in runs} == {"top1_head", "top1pct_ffn"}
    assert len({r.data.tags["gated_lpi.sweep"] for r in runs}) == 1
    # The jobs, separate processes, found one parent run; the launching process closed it at the end.
    (parent,) = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert client.get_run(parent).info.status == "FINISHED"
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "hit_at_10"))
    assert len(steps) == 3
    for step in steps:
        from_cache = sorted(
            {m.step: m.value for m in client.get_metric_history(r.info.run_id, "attribution.from_cache")}[
                step
            ]
            for r in runs
        )
        assert from_cache == [0.0, 1.0], f"step {step}: computed by exactly one job"
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert logs.count("attribution of 3 relations computed, 0 from cache") == 3
    assert logs.count("attribution of 0 relations computed, 3 from cache") == 3


def test_launcher_presets_compose_with_documented_fields():
    prepare_hydra()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        slurm = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
        local = compose("config", ["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
        basic = compose("config", [], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and local._target_.endswith("LocalLauncher")
    for key in ("partition", "gpus_per_node", "tasks_per_node", "timeout_min", "mem_gb", "cpus_per_task"):
        assert key in slurm, key
    assert slurm.max_num_timeout > 0  # a timed-out job is resubmitted and resumes from the result store
    assert basic._target_.endswith("BasicLauncher")  # the default stays basic
