"""``python -m gated_lpi_exp [group=option ...] [-m]``: compose a run's config with Hydra and execute it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from gated_lpi_exp.compose import CONF_DIR, prepare_hydra
from gated_lpi_exp.config import to_run_config
from gated_lpi_exp.errors import GatedLPIError
from gated_lpi_exp.tracking.names import JOB_NUM_TAG, OVERRIDES_TAG, SWEEP_TAG

prepare_hydra()
log = logging.getLogger("gated_lpi_exp")


def hydra_tags() -> dict[str, str]:
    """Tags that group the jobs of one ``-m`` sweep in MLflow."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {OVERRIDES_TAG: " ".join(hc.overrides.task) or "(defaults)"}
    if hc.mode == RunMode.MULTIRUN:
        tags[SWEEP_TAG] = str(Path(hc.sweep.dir).resolve())
        tags[JOB_NUM_TAG] = str(hc.job.num)
    return tags


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one Hydra job; a project error ends with its message (no traceback) and exit status 2."""
    from gated_lpi_exp.run import run

    try:
        result = run(to_run_config(cfg), hydra_tags=hydra_tags())
    except GatedLPIError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(2)
    return result.metrics.get("hit_at_10")


if __name__ == "__main__":
    main()
