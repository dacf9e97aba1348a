"""Compose the run config outside ``@hydra.main`` (tests, the cost planner, notebooks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gated_lpi_exp.config import RunConfig, register_configs, to_run_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


def prepare_hydra() -> None:
    """Register the schemas and let Hydra find the ``experiments`` presets (``./experiments/*.yaml``)."""
    os.environ.setdefault("GATED_LPI_EXP_ROOT", str(PROJECT_ROOT))
    register_configs()


def compose_dictconfig(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed (unchecked) config for command-line style ``overrides``."""
    prepare_hydra()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_run_config(overrides: Sequence[str] = ()) -> RunConfig:
    """The checked run config for ``overrides`` such as ``["model=olmoe", "relations=factual"]``."""
    return to_run_config(compose_dictconfig(overrides))
