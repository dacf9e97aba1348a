"""Cache and resume: a run killed with SIGKILL resumes from its finished checkpoints, and concurrent writers
of one result entry leave it whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from scale_helpers import CLI, assert_same_numbers, cli_env, make_series, overrides, result_store, runs_of

from gated_lpi_exp.checkpoints.loading import resolve_series
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.run import run
from gated_lpi_exp.storage.results import ResultStore

STEPS = [0, 10, 20, 30, 40, 50, 60, 70]
SLOWER = ["relations=all", "ablation=top1_head", "ablation.random_seeds=1"]
"""Enough work per checkpoint that the kill lands mid-run."""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finished_steps(state_dir) -> set[int]:
    for path in state_dir.glob("*.json"):
        try:
            return {int(s) for s in json.loads(path.read_text())["checkpoints"]}
        except (json.JSONDecodeError, KeyError):  # never torn (atomic rename); defensive
            pass
    return set()


def test_a_killed_run_resumes_without_recomputing_and_ends_with_the_same_numbers(tmp_path, caplog):
    series = make_series(tmp_path / "series", STEPS)
    args = overrides(series, tmp_path / "work", *SLOWER)
    proc = subprocess.Popen(
        [*CLI, *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_dir = tmp_path / "work" / "cache" / "runs"
    deadline = time.time() + 180
    while not _finished_steps(state_dir):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint finished in 180 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    cfg = compose_run_config(args)
    store = result_store(cfg)
    ckpts = {c.step: c for c in resolve_series(cfg.model, cfg.checkpoints).checkpoints}
    finished = {s for s in STEPS if store.path(ckpts[s]).is_file()}  # stored, so reusable
    assert _finished_steps(state_dir) <= finished and 1 <= len(finished) < len(STEPS), finished
    entries = {s: store.path(ckpts[s]) for s in finished}
    mtimes = {s: p.stat().st_mtime_ns for s, p in entries.items()}
    client, (killed,) = runs_of(cfg.tracking.uri)
    assert killed.info.status == "RUNNING"  # a SIGKILLed process cannot end its MLflow run

    with caplog.at_level("INFO", logger="gated_lpi_exp"):
        resumed = run(cfg)
    for step in STEPS:
        reused = f"step {step}: result from the result store, not recomputed" in caplog.text
        computed = f"step {step}: attribution of" in caplog.text
        assert (reused, computed) == (step in finished, step not in finished), step
    assert {s: p.stat().st_mtime_ns for s, p in entries.items()} == mtimes  # not rewritten

    new = client.get_run(resumed.run_id)
    assert new.data.tags["gated_lpi.resumed_from"] == killed.info.run_id
    assert new.data.params["run.reused_steps"] == ",".join(map(str, sorted(finished)))
    from_store = {m.step: m.value for m in client.get_metric_history(resumed.run_id, "resume.from_store")}
    assert from_store == {s: float(s in finished) for s in STEPS}
    old = client.get_run(killed.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["gated_lpi.resumed_by"] == resumed.run_id
    attempts = json.loads(next(state_dir.glob("*.json")).read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["killed", "finished"]

    reference_cfg = compose_run_config(overrides(series, tmp_path / "reference", *SLOWER))
    reference = run(reference_cfg)
    assert_same_numbers(cfg.tracking.uri, resumed.run_id, reference_cfg.tracking.uri, reference.run_id,
                        tmp_path / "dl")  # fmt: skip


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np, pandas as pd
    from gated_lpi_exp.checkpoints.resolve import Checkpoint
    from gated_lpi_exp.compose import compose_run_config
    from gated_lpi_exp.storage.results import CheckpointResult, ResultStore
    from gated_lpi_exp.storage.run_state import RunState
    from gated_lpi_exp.attribution.aggregate import UNIT_KINDS, ScoreSums

    root, who = sys.argv[1], int(sys.argv[2])
    Path(root, f"ready-{who}").touch()
    while len(list(Path(root).glob("ready-*"))) < 2:  # start writing together
        time.sleep(0.01)
    cfg = compose_run_config([f"execution.result_dir={root}"])
    store = ResultStore(cfg, data_hash="same-data", tokens_hash="same-tokens")
    ckpt = Checkpoint(step=7, source="hub/model", revision="step7")
    rng = np.random.default_rng(0)  # both writers write the same content, as two runs would
    shapes = {k: (2, 4) if k.endswith("_layer") else (2, 4, 5000) for k in UNIT_KINDS}
    sums = {"r": ScoreSums({k: rng.normal(size=shapes[k]) for k in UNIT_KINDS}, np.array([3, 2]))}
    hits = pd.DataFrame(dict(step=7, relation="r", category="factual", sample_id=range(5), target_id=1,
                             gold_rank=range(1, 6)))
    result = CheckpointResult(ckpt, hits)
    state = RunState(root, {"run": "same"})
    for i in range(10):
        store.put(result, sums)
        state.record(100 * who + i, "entry", rank=who)
        got = store.get(ckpt)
        assert got is not None and got.aggregate.ffn.shape == (4, 5000)
    print("ok")
    """
)


def test_two_processes_writing_the_same_entry_leave_it_whole(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(who)], env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for who in (1, 2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    cfg = compose_run_config([f"execution.result_dir={tmp_path}"])
    got = ResultStore(cfg, data_hash="same-data", tokens_hash="same-tokens").get(
        Checkpoint(step=7, source="hub/model", revision="step7")
    )
    rng = np.random.default_rng(0)
    expected = {k: rng.normal(size=(2, 4, 5000)) for k in ("ffn",)}
    np.testing.assert_array_equal(got.aggregate.ffn, expected["ffn"].sum(axis=0) / 5)
    assert got.hits["gold_rank"].tolist() == [1, 2, 3, 4, 5]
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    recorded = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())["checkpoints"]
    assert sorted(map(int, recorded)) == sorted([100 + i for i in range(10)] + [200 + i for i in range(10)])
