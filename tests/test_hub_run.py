"""Whole runs over the hub path: the command line pointed at a loopback hub server with ``HF_ENDPOINT``, the
ordinary ``huggingface_hub`` client doing the listing and the downloads, against a local run of the same
series; a ``kill -9`` in the middle of a download; downloads that fail for good; the cache used offline; a
two-process run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from hub_helpers import REPO, blob_names, checkpoint_bytes, repo_folder, weights_etag
from huggingface_hub import scan_cache_dir
from scale_helpers import CLI, assert_same_numbers, cli_env, make_series, overrides, run_cli, runs_of
from test_distributed import _accelerate

from gated_lpi_exp.checkpoints.loading import load_tokenizer, resolve_series
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.data import dataset_hash
from gated_lpi_exp.data.batches import token_fingerprint
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.run import load_samples, run
from gated_lpi_exp.storage.results import ResultStore
from gated_lpi_exp.testing.disk import DiskSampler
from gated_lpi_exp.testing.hub_repo import HubRepository
from gated_lpi_exp.testing.hub_server import HubServer

STEPS = [0, 10, 20, 30, 40, 50, 60, 70]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return make_series(tmp_path_factory.mktemp("hubrun") / "series", STEPS)


@pytest.fixture(scope="module")
def repo(series):
    return HubRepository.from_series(REPO, series)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CLI processes run with OMP_NUM_THREADS=1: the same arithmetic
    yield
    torch.set_num_threads(threads)


def hub_overrides(series, work, *extra: str) -> list[str]:
    """The run of :func:`overrides`, but of the series as served by the hub server."""
    local = [a for a in overrides(series, work, *extra) if not a.startswith(("model.kind=", "model.source="))]
    return [*local, "model.kind=hub", f"model.source={REPO}"]


def hub_env(server: HubServer, cache) -> dict[str, str]:
    return {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.mark.slow
def test_a_sweep_over_the_hub_matches_a_local_run_and_holds_at_most_two_checkpoints(series, repo, tmp_path):
    cache = tmp_path / "hf"
    with HubServer(repo, rate=1e6) as server, DiskSampler(repo_folder(cache)) as disk:
        done = run_cli(hub_overrides(series, tmp_path / "hub"), cwd=tmp_path, env=hub_env(server, cache))
    assert done.returncode == 0, done.stdout[-3000:]
    assert 0 < disk.peak <= 2 * checkpoint_bytes(repo), (disk.peak, checkpoint_bytes(repo))  # prefetch=1
    assert blob_names(cache) == set() and not scan_cache_dir(cache).warnings  # evicted, cache consistent
    for branch in (f"step{s}-tokens0B" for s in STEPS):
        assert len(server.downloads(weights_etag(repo, branch))) == 1

    uri = f"sqlite:///{tmp_path}/hub/mlflow.db"
    client, (hub_run,) = runs_of(uri)
    commits = [repo.revisions[f"step{s}-tokens0B"].commit for s in STEPS]
    assert hub_run.data.params["run.commits"] == ",".join(
        f"{s}:{c[:12]}" for s, c in zip(STEPS, commits, strict=True)
    )
    assert hub_run.data.metrics["download.disk_peak_bytes"] <= 2 * checkpoint_bytes(repo)
    local_cfg = compose_run_config(overrides(series, tmp_path / "local"))
    local = run(local_cfg)
    assert_same_numbers(uri, hub_run.info.run_id, local_cfg.tracking.uri, local.run_id, tmp_path / "dl",
                        skip_tables=("checkpoints",))  # fmt: skip
    table = client.download_artifacts(hub_run.info.run_id, "tables/checkpoints.parquet", str(tmp_path))
    assert pd.read_parquet(table)["commit"].tolist() == commits


def _state(work) -> dict:
    for path in (work / "cache" / "runs").glob("*.json"):
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # never torn (atomic rename); defensive
            pass
    return {}


@pytest.mark.slow
def test_kill_9_mid_download_then_the_same_command_finishes_without_downloading_or_computing_again(
    series, repo, tmp_path
):
    cache, work = tmp_path / "hf", tmp_path / "work"
    args = hub_overrides(series, work, "relations=all", "ablation=top1_head", "ablation.random_seeds=1")
    with HubServer(repo, rate=150e3) as server:
        env = cli_env(**hub_env(server, cache))
        proc = subprocess.Popen(
            [*CLI, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 240
        blobs = repo_folder(cache) / "blobs"
        while not (_state(work).get("checkpoints") and blobs.is_dir() and list(blobs.glob("*.incomplete"))):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no download in flight after a finished checkpoint in 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        killed_at, complete = len(server.log), blob_names(cache)
        finished = {int(s) for s in _state(work)["checkpoints"]}
        assert complete and 1 <= len(finished) < len(STEPS)

        done = run_cli(args, cwd=tmp_path, env=hub_env(server, cache), timeout=600)  # slow on a busy machine
        assert done.returncode == 0, done.stdout[-3000:]
    again = {s.etag for s in server.log[killed_at:] if s.method == "GET" and s.status in (200, 206)}
    assert not again & complete  # no file completed before the kill is downloaded again
    for step in STEPS:
        reused = f"step {step}: result from the result store, not recomputed" in done.stdout
        assert reused == (step in finished), step
    assert blob_names(cache) == set() and not scan_cache_dir(cache).warnings  # the killed run's files too
    client, runs = runs_of(f"sqlite:///{work}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


def test_a_download_that_fails_for_good_skips_its_checkpoint_or_stops_the_run(
    repo, series, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    selection = ["checkpoints=range", "checkpoints.stop=30", "execution.download_retries=0"]
    with HubServer(repo) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.faults.corrupt.add(weights_etag(repo, "step20-tokens0B"))
        cfg = compose_run_config(hub_overrides(series, tmp_path / "warn", *selection))
        with caplog.at_level(logging.WARNING, logger="gated_lpi_exp"):
            result = run(cfg)
        assert "step 20 skipped" in caplog.text and "does not match" in caplog.text
        assert sorted(result.tables["hit_summary"]["step"].unique()) == [0, 10, 30]
        _, (warned,) = runs_of(cfg.tracking.uri)
        assert warned.data.params["run.failed_downloads"] == "20"

        stop = compose_run_config(
            hub_overrides(series, tmp_path / "fail", *selection, "checkpoints.missing=fail")
        )
        with pytest.raises(CheckpointError, match=r"step 20.*does not match the hash it advertises.*Fix"):
            run(stop)
    # The series' tokenizer from its local copy: the hub serves the same files, and the key is by content.
    local = compose_run_config(overrides(series, tmp_path / "local"))
    tokenizer = load_tokenizer(local.model, resolve_series(local.model, local.checkpoints).checkpoints[0])
    samples = load_samples(stop)
    store = ResultStore(stop, dataset_hash(samples), token_fingerprint(tokenizer, samples))
    finished = [c.step for c in result.checkpoints if store.has(c)]
    assert finished == [0, 10]  # the checkpoints before the failure are kept for a rerun


def test_kept_branches_run_offline_and_revisions_accept_commit_ids(repo, series, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    commit = repo.revisions["step30-tokens0B"].commit
    pick = ["checkpoints=range", "checkpoints.stop=30"]
    with HubServer(repo) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        online = run(
            compose_run_config(
                hub_overrides(series, tmp_path / "on", *pick, "execution.keep_checkpoints=all")
            )
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone
    revisions = f"checkpoints.revisions=[step10-tokens0B,'{commit[:10]}']"
    cfg = compose_run_config(
        hub_overrides(series, tmp_path / "off", "checkpoints.select=revisions", revisions)
    )
    offline = run(cfg)
    assert [c.step for c in offline.checkpoints] == [10, 30] and offline.checkpoints[1].commit == commit
    for name in ("example_hits", "top_units"):
        on, off = online.tables[name], offline.tables[name]
        on = on[on["step"].isin([10, 30])].reset_index(drop=True)
        pd.testing.assert_frame_equal(on, off.reset_index(drop=True), check_exact=True, obj=name)
    assert len(blob_names(tmp_path / "hf")) >= 4  # kept, and nothing evicted offline


@pytest.mark.slow
def test_each_process_of_a_two_process_run_downloads_its_own_share(series, repo, tmp_path):
    cache = tmp_path / "hf"
    with HubServer(repo, rate=2e6) as server:
        done = run_cli(
            hub_overrides(series, tmp_path / "multi"),
            cwd=tmp_path,
            launcher=_accelerate(),
            env=hub_env(server, cache),
        )
    assert done.returncode == 0, done.stdout[-3000:]
    state = _state(tmp_path / "multi")
    assert {int(s): c["rank"] for s, c in state["checkpoints"].items()} == {
        s: i % 2 for i, s in enumerate(STEPS)
    }
    for branch in (f"step{s}-tokens0B" for s in STEPS):
        assert len(server.downloads(weights_etag(repo, branch))) == 1  # by the one process that analysed it
    assert blob_names(cache) == set() and not scan_cache_dir(cache).warnings
