"""The package as users install it: a regular (non-editable) install of the wheel carries the configs and
the experiment presets, so the main job composes and runs from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import cli_env, make_series, overrides, runs_of

import gated_lpi_exp

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(gated_lpi_exp.__file__).resolve().parent
SHIPPED_DATA = {"gated_lpi_exp.conf": "conf", "gated_lpi_exp.experiments": "experiments"}
"""The packages that pyproject.toml maps onto top-level folders (their YAML files ship in the wheel)."""


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_lists_every_package_folder_and_maps_the_configs_into_the_package():
    setuptools = _pyproject()["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert set(setuptools["packages"]) == on_disk | set(SHIPPED_DATA)
    assert setuptools["package-dir"] == SHIPPED_DATA


def _python(args: list[str], cwd: Path, site: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd`` with the installed copy in ``site`` first on the import path."""
    env = cli_env()
    env["PYTHONPATH"] = str(site)
    env.pop("GATED_LPI_EXP_ROOT", None)
    out = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _install_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of what a source distribution holds, and install it (no dependencies,
    offline: they come from this environment) into a folder of its own."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "gated_lpi_exp", src / "gated_lpi_exp", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "conf", src / "conf")
    (src / "experiments").mkdir()
    for preset in (REPO / "experiments").glob("*.yaml"):
        shutil.copy(preset, src / "experiments")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    pip = ["-m", "pip", "-q", "--disable-pip-version-check"]
    dist, site = tmp_path / "dist", tmp_path / "site"
    _python([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
            tmp_path, site)  # fmt: skip
    (wheel,) = dist.glob("gated_lpi_exp-*.whl")
    _python([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], tmp_path, site)
    return site


@pytest.mark.slow
def test_a_regular_install_composes_and_runs_the_main_job_from_any_folder(tmp_path):
    site = _install_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _python(["-c", "import gated_lpi_exp.compose as c; print(c.CONF_DIR)"], elsewhere, site)
    assert Path(where.stdout.strip()) == site / "gated_lpi_exp" / "conf"
    job = _python(["-m", "gated_lpi_exp", "--cfg", "job", "--resolve"], elsewhere, site)
    assert "name: tiny_moe" in job.stdout and "ablation:" in job.stdout
    preset = _python(["-m", "gated_lpi_exp", "experiments=tiny_suites", "--cfg", "job"], elsewhere, site)
    assert "experiment: tiny_suites" in preset.stdout

    series, work = make_series(tmp_path / "series"), tmp_path / "work"
    args = overrides(series, work, "checkpoints=first_last", "ablation=none")
    _python(["-m", "gated_lpi_exp", *args], elsewhere, site)
    _, runs = runs_of(f"sqlite:///{work}/mlflow.db")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["final.hit_at_10"] >= 0.0
