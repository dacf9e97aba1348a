"""``python -m gated_lpi_exp [group=option ...] [-m]``: compose a run's config with Hydra and execute it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gated_lpi_exp.compose import CONF_DIR, prepare_hydra
from gated_lpi_exp.config import TrackingConfig, to_run_config
from gated_lpi_exp.errors import GatedLPIError
from gated_lpi_exp.tracking.names import JOB_NUM_TAG, OVERRIDES_TAG, SWEEP_TAG

prepare_hydra()
log = logging.getLogger("gated_lpi_exp")


def sweep_dir() -> str | None:
    """The folder of the ``-m`` sweep this job belongs to (None for a single run)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(Path(HydraConfig.get().sweep.dir).resolve())


def hydra_tags() -> dict[str, str]:
    """Tags that group the jobs of one ``-m`` sweep in MLflow."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {OVERRIDES_TAG: " ".join(hc.overrides.task) or "(defaults)"}
    if (folder := sweep_dir()) is not None:
        tags[SWEEP_TAG] = folder
        tags[JOB_NUM_TAG] = str(hc.job.num)
    return tags


def report_command(folder: str | None, run_id: str, where: str) -> str:
    """The report command for this run, or for its whole sweep (``where``: its store options, if any)."""
    if folder is None:
        return f"python -m gated_lpi_exp.report{where} --runs {run_id[:8]}"
    shown = os.path.relpath(folder) if Path(folder).is_relative_to(Path.cwd()) else folder
    return (
        f"python -m gated_lpi_exp.report{where} --sweep {shown}   (when every job of the sweep has finished)"
    )


def report_options(tracking: TrackingConfig) -> str:
    """The report's ``--tracking-uri`` and ``--experiment`` for runs logged with ``tracking`` (none where the
    defaults name the same store and experiment from here)."""
    from gated_lpi_exp.tracking.sweep import store_key

    default = TrackingConfig()
    uri = f" --tracking-uri {tracking.uri}" if store_key(tracking.uri) != store_key(default.uri) else ""
    return uri + (f" --experiment {tracking.experiment}" if tracking.experiment != default.experiment else "")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one Hydra job and print its results; a project error ends with its message (no traceback) and
    exit status 2."""
    from gated_lpi_exp.console import console, run_summary
    from gated_lpi_exp.run import run

    try:
        with console():
            run_cfg = to_run_config(cfg)
            result = run(run_cfg, hydra_tags=hydra_tags(), sweep_dir=sweep_dir())
    except GatedLPIError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(2)
    if result.run_id:  # process 0 of the run
        command = report_command(sweep_dir(), result.run_id, report_options(run_cfg.tracking))
        summary = run_summary(run_cfg, result.tables, result.run_id, result.url, command)
        print(summary, flush=True)
    return result.metrics.get("hit_at_10")


if __name__ == "__main__":
    main()
