"""``python -m gated_lpi_exp.bench sweep``: what streaming a hub series costs, measured in one process.

A series of random dense checkpoints is saved, served by the loopback hub server (``HF_ENDPOINT`` points the
run at it) with a bandwidth limit chosen so that downloading the series takes ``--ratio`` times as long as
analysing it (1.0, the default, is the hardest case for overlap), and measured four ways:

- **compute**: the same run from the local files (nothing to download): the walk's compute and the run's
  fixed costs (examples, MLflow, dynamics, figures);
- **download**: every checkpoint downloaded through the project's downloader, nothing computed;
- **sweep, prefetch=0**: the run over the hub, each checkpoint downloaded only when the previous is done;
- **sweep, prefetch=1**: the run over the hub, the next checkpoint downloading while one is analysed.

Times are the checkpoint walk's (the run's ``time.walk_s``; the run's fixed costs before and after the walk,
identical in every run, are reported beside them). Target: the ``prefetch=1`` walk ≤ 1.15 × max(download,
compute) + one checkpoint's download, and the hub cache never holding more than ``prefetch + 1`` checkpoints
(sampled every 5 ms from the cache folder, an independent measure, beside the run's own
``download.disk_peak_bytes``). Checkpoints are 13 MB by default (``--hidden 512``), more than the 10 MiB blocks
the client writes in, so a partial download shows on disk as it would for a real checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gated_lpi_exp.checkpoints.download import Downloader
from gated_lpi_exp.checkpoints.eviction import cache_bytes
from gated_lpi_exp.checkpoints.hub import HubSettings, list_hub_checkpoints
from gated_lpi_exp.testing import bundled_word_tokenizer, save_random_series
from gated_lpi_exp.testing.disk import DiskSampler
from gated_lpi_exp.testing.hub_repo import HubRepository
from gated_lpi_exp.testing.hub_server import HubServer

REPO = "bench/random-dense"
WALL_SLACK = 1.15
WORK = ("relations=all", "relations.max_per_relation=6", "ablation=top1_head", "ablation.random_seeds=1")
"""Enough work per checkpoint that compute is not all fixed costs."""


def _overrides(work: Path, source: str, kind: str, *extra: str) -> list[str]:
    # A dense OLMo preset without the paper's protocol (model=olmo brings in its data, grid and windows).
    return [
        "model=olmo_0424", f"model.kind={kind}", f"model.source={source}", "model.name=bench", "model.dtype=float32",
        "model.device=cpu", f"tracking.uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_location={work}/mlruns",
        f"attribution.cache_dir={work}/cache", "progress=false", *WORK, *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(work: Path, overrides: list[str]) -> dict[str, Any]:
    """One run in this process: its total wall time, and the metrics it logged (``time.walk_s``: the walk)."""
    import mlflow

    from gated_lpi_exp.compose import compose_run_config
    from gated_lpi_exp.run import run

    started = time.perf_counter()
    run(compose_run_config(overrides))
    wall = time.perf_counter() - started
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("gated_lpi_exp")
    (logged,) = client.search_runs([experiment.experiment_id], max_results=1)
    return {"run_s": wall, **logged.data.metrics}


def _sweep(server: HubServer, root: Path, name: str, prefetch: int) -> dict[str, Any]:
    """One run over the hub into a fresh cache: its walk and run times, disk peak (sampled, and its own)."""
    work, cache = root / name, root / f"{name}-hf"
    with _environ(HF_ENDPOINT=server.url, HF_HUB_CACHE=str(cache)), DiskSampler(cache) as disk:
        metrics = _run(work, _overrides(work, REPO, "hub", f"execution.prefetch={prefetch}"))
    return {
        "walk_s": metrics["time.walk_s"],
        "run_s": metrics["run_s"],
        "disk_peak_bytes": disk.peak,
        "run_disk_peak_bytes": metrics.get("download.disk_peak_bytes"),
        "wait_s": metrics.get("download.wait_s"),
        "left_in_cache_bytes": cache_bytes(HubSettings(server.url, cache, False).repo_folder(REPO)),
    }


def _download(server: HubServer, cache: Path) -> float:
    """Seconds to download every checkpoint of the served series, one after the other, nothing computed."""
    settings = HubSettings(server.url, cache, False)
    started = time.perf_counter()
    downloader = Downloader(settings)
    for ckpt in list_hub_checkpoints(REPO, settings=settings):
        downloader.fetch(ckpt)
    return time.perf_counter() - started


def run_sweep_benchmark(
    steps: int = 8, ratio: float = 1.0, hidden: int = 512, folder: Path | None = None
) -> dict[str, Any]:
    """Measure compute, download and the two sweeps (see the module docstring); return the report."""
    with tempfile.TemporaryDirectory(prefix="gated-lpi-sweep-", dir=folder) as tmp:
        root = Path(tmp)
        series = save_random_series(
            root / "series",
            "olmo",
            [10 * i for i in range(steps)],
            bundled_word_tokenizer(),
            hidden_size=hidden,
        )
        repo = HubRepository.from_series(REPO, series)
        ckpt_bytes = [sum(f.size for f in r.files.values()) for r in repo.step_branches()]
        _run(root / "warmup", _overrides(root / "warmup", str(series), "local", "checkpoints=first_last"))
        local = _run(root / "compute", _overrides(root / "compute", str(series), "local"))
        compute = local["time.walk_s"]
        rate = sum(ckpt_bytes) / (ratio * compute)
        with HubServer(repo, rate=rate) as server:
            download = _download(server, root / "download-hf")
            serial = _sweep(server, root, "prefetch0", 0)
            overlapped = _sweep(server, root, "prefetch1", 1)
    target = WALL_SLACK * max(compute, download) + download / steps
    return {
        "steps": steps, "ratio": ratio, "hidden": hidden, "bandwidth_bytes_per_s": rate,
        "checkpoint_bytes": max(ckpt_bytes), "series_bytes": sum(ckpt_bytes),
        "compute_s": compute, "compute_run_s": local["run_s"], "download_s": download,
        "prefetch0": serial, "prefetch1": overlapped,
        "wall_target_s": target, "wall_target_met": overlapped["walk_s"] <= target,
        "disk_target_met": overlapped["disk_peak_bytes"] <= 2 * max(ckpt_bytes),
    }  # fmt: skip


def format_sweep(report: dict[str, Any]) -> str:
    """The report as text, one measure per line."""
    mb, ckpt = 1e6, report["checkpoint_bytes"]
    s0, s1 = report["prefetch0"], report["prefetch1"]

    def disk(sweep: dict[str, Any]) -> str:
        own = sweep["run_disk_peak_bytes"]
        return (
            f"disk peak {sweep['disk_peak_bytes'] / mb:.2f} MB = {sweep['disk_peak_bytes'] / ckpt:.2f} checkpoints "
            f"(run's own measure {own / ckpt if own else 0:.2f}), waited {sweep['wait_s'] or 0:.1f} s for downloads"
        )

    verdict = {True: "met", False: "NOT met"}
    return "\n".join([
        f"== sweep over the loopback hub: {report['steps']} checkpoints of <= {ckpt / mb:.2f} MB "
        f"({report['series_bytes'] / mb:.1f} MB), bandwidth {report['bandwidth_bytes_per_s'] / mb:.3f} MB/s "
        f"(download ~ {report['ratio']:.2f} x compute); times are the checkpoint walk's (whole runs in brackets)",
        f"compute (local files)      {report['compute_s']:7.1f} s  ({report['compute_run_s']:.1f} s)",
        f"download (no compute)      {report['download_s']:7.1f} s",
        f"sweep, prefetch=0          {s0['walk_s']:7.1f} s  ({s0['run_s']:.1f} s)  {disk(s0)}",
        f"sweep, prefetch=1          {s1['walk_s']:7.1f} s  ({s1['run_s']:.1f} s)  {disk(s1)}",
        f"wall with prefetch / max(compute, download): {s1['walk_s'] / max(report['compute_s'], report['download_s']):.3f}; "
        f"target <= {WALL_SLACK} x max + one checkpoint's download = {report['wall_target_s']:.1f} s: "
        f"{verdict[report['wall_target_met']]}",
        f"disk peak with prefetch=1 <= 2 checkpoints: {verdict[report['disk_target_met']]}; "
        f"left in the cache after the runs: {s0['left_in_cache_bytes'] + s1['left_in_cache_bytes']} bytes",
    ])  # fmt: skip
