"""Compose the run config outside ``@hydra.main`` (tests, the cost planner, notebooks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gated_lpi_exp.config import ABLATION_UNITS, AblationConfig, RunConfig, register_configs, to_run_config
from gated_lpi_exp.errors import ConfigurationError


def config_root() -> Path:
    """The folder holding ``conf/`` and ``experiments/``: the installed package, where a wheel ships them
    (``pyproject.toml`` maps the top-level folders into it), else the source tree (an editable install)."""
    package = Path(__file__).resolve().parent
    return package if (package / "conf" / "config.yaml").is_file() else package.parent


CONFIG_ROOT = config_root()
CONF_DIR = CONFIG_ROOT / "conf"
EXPERIMENTS_DIR = CONFIG_ROOT / "experiments"


def prepare_hydra() -> None:
    """Register the schemas and let Hydra find the ``experiments`` presets (``<root>/experiments/*.yaml``,
    the root being ``$GATED_LPI_EXP_ROOT`` when set, else :data:`CONFIG_ROOT`)."""
    os.environ.setdefault("GATED_LPI_EXP_ROOT", str(CONFIG_ROOT))
    register_configs()
    # --help lists the config groups Hydra knows before it reads the search path, so not `experiments`.
    OmegaConf.register_new_resolver("experiment_presets", experiment_presets, replace=True)


def experiment_presets() -> str:
    """The names of the ``experiments`` presets, comma-separated (for ``--help``)."""
    root = Path(os.environ.get("GATED_LPI_EXP_ROOT") or CONFIG_ROOT) / "experiments"
    return ", ".join(sorted(p.stem for p in root.glob("*.yaml"))) or "(none)"


def compose_dictconfig(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed (unchecked) config for command-line style ``overrides``."""
    prepare_hydra()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_run_config(overrides: Sequence[str] = ()) -> RunConfig:
    """The checked run config for ``overrides`` such as ``["model=olmoe", "relations=factual"]``."""
    return to_run_config(compose_dictconfig(overrides))


def ablation_presets() -> dict[str, AblationConfig]:
    """The intervention presets ``conf/ablation/*.yaml`` (except ``none``), checked, by name.

    Ordered by unit (heads first), then by how many units they zero, so tables and figures list them the
    same way whatever the file names.

    Raises:
        ConfigurationError: A preset file does not compose onto :class:`AblationConfig`; names the file.
    """
    presets = []
    for path in sorted((CONF_DIR / "ablation").glob("*.yaml")):
        try:
            node = OmegaConf.merge(OmegaConf.structured(AblationConfig), OmegaConf.load(path) or {})
            preset = OmegaConf.to_object(node)
        except (OmegaConfBaseException, ConfigurationError) as exc:
            raise ConfigurationError(f"{path}: not a valid ablation preset: {exc}") from exc
        assert isinstance(preset, AblationConfig)
        if preset.enabled:
            presets.append(preset)
    presets.sort(key=lambda p: (ABLATION_UNITS.index(p.unit), p.count, p.fraction, p.name))
    return {p.name: p for p in presets}
