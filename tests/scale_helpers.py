"""Shared by the scale-out, resume and bad-input tests: a tiny local series, its overrides, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from gated_lpi_exp.testing import bundled_word_tokenizer, save_random_series

STEPS = [0, 10, 20, 30]
CLI = [sys.executable, "-u", "-m", "gated_lpi_exp"]
VOLATILE = ("time.", "resume.", "attribution.from_cache", "download.")
"""Metrics that say how a run got its numbers, not what the numbers are."""


def bundled_tokenizer():
    return bundled_word_tokenizer()


def make_series(root: Path, steps=STEPS, family: str = "olmo") -> Path:
    """A local series of random dense checkpoints (fast on CPU) over the bundled data's words."""
    return save_random_series(root, family, steps, bundled_tokenizer(), name="random")


def overrides(series: Path, work: Path, *extra: str) -> list[str]:
    """A small CPU run of ``series`` whose tracking, caches and result store all live under ``work``."""
    return [
        "model=olmo",
        "model.kind=local",
        f"model.source={series}",
        "model.name=random",
        "model.dtype=float32",
        "model.device=cpu",
        "checkpoints=all",  # not the paper's grid and data, which model=olmo brings in
        "relations=linguistic",
        "relations.source=bundled",
        "relations.max_per_relation=2",
        f"tracking.uri=sqlite:///{work}/mlflow.db",
        f"tracking.artifact_location={work}/mlruns",
        f"attribution.cache_dir={work}/cache",
        "ablation=top1_head",  # the series has 8 heads: the default top10_heads would mask them all
        "progress=false",
        *extra,
    ]


def result_store(cfg):
    """The result store a run of ``cfg`` uses (keyed by its data and the series' tokenizer)."""
    from gated_lpi_exp.checkpoints.loading import load_tokenizer, resolve_series
    from gated_lpi_exp.data import dataset_hash
    from gated_lpi_exp.data.batches import token_fingerprint
    from gated_lpi_exp.run import load_samples
    from gated_lpi_exp.storage.results import ResultStore

    samples = load_samples(cfg)
    tokenizer = load_tokenizer(cfg.model, resolve_series(cfg.model, cfg.checkpoints).checkpoints[0])
    return ResultStore(cfg, dataset_hash(samples), token_fingerprint(tokenizer, samples))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one thread per process (2 shared cores), no inherited store;
    ``extra`` variables added (e.g. ``HF_ENDPOINT``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="0", **extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: float = 240, launcher=CLI, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``launcher + args`` to completion (``env``: extra variables); stdout and stderr in ``.stdout``."""
    return subprocess.run(
        [*launcher, *args],
        cwd=cwd,
        env=cli_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def runs_of(uri: str, experiment: str = "gated_lpi_exp"):
    """The client and the experiment's runs of jobs (not the parent runs of sweeps)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("gated_lpi.sweep_parent") != "1"]


def logged_tables(uri: str, run_id: str, dst: Path) -> dict[str, pd.DataFrame]:
    """Every ``tables/*.parquet`` artifact of a run, read back (not their ``.csv`` copies)."""
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    out = {}
    for artifact in client.list_artifacts(run_id, "tables"):
        if not artifact.path.endswith(".parquet"):
            continue
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact.path, dst_path=str(dst / run_id)
        )
        out[Path(artifact.path).stem] = pd.read_parquet(local)
    return out


def logged_metrics(uri: str, run_id: str, skip=VOLATILE) -> dict[str, dict[int, float]]:
    """Metric -> {step: value} of a run (metrics that describe how it ran left out)."""
    client = MlflowClient(uri)
    names = client.get_run(run_id).data.metrics
    return {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in names
        if not name.startswith(skip)
    }


def assert_same_numbers(
    uri_a: str, run_a: str, uri_b: str, run_b: str, dst: Path, skip_tables: tuple[str, ...] = ()
) -> None:
    """Two runs logged the same tables (but ``skip_tables``) and the same metric values at the same steps.

    Exact equality is the code's own guarantee here, not a dependency's: both runs do the same float
    computations on the same batches in the same environment with one torch thread (conftest), so nothing
    can round differently."""
    a, b = logged_tables(uri_a, run_a, dst), logged_tables(uri_b, run_b, dst)
    assert sorted(a) == sorted(b)
    for name in set(a) - set(skip_tables):
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)
    metrics_a, metrics_b = logged_metrics(uri_a, run_a), logged_metrics(uri_b, run_b)
    assert metrics_a == metrics_b
