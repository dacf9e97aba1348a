"""The end of a ``-m`` sweep (a Hydra callback, ``hydra.callbacks.sweep`` in ``conf/config.yaml``): each
parent MLflow run of the sweep gets the sweep's config and the comparison report of its jobs' runs, ends
FINISHED (every job finished) or FAILED, and the console says which sweep it was and what to run next.

The jobs create the parent (:func:`gated_lpi_exp.tracking.sweep.sweep_parent`); this runs in the process that
launched them, after the last one. A sweep that stops early (a job's error ends it) marks its parents FAILED
on the way out.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from gated_lpi_exp.config import TrackingConfig
from gated_lpi_exp.tracking.sweep import SweepParent, children, finish_parent, read_parents, store_key
from gated_lpi_exp.tracking.ui import browse_hint, runs_page

log = logging.getLogger(__name__)


def shown_path(folder: str | os.PathLike[str]) -> str:
    """A folder as a person would type it here: relative to the working folder when inside it."""
    path = Path(folder).resolve()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def log_comparison(parent: SweepParent, sweep_dir: Path) -> None:
    """Log the sweep's config (``config/multirun.yaml``) and the report over its finished runs
    (``report/report.html``, ``report/report.md`` and the figures) to the parent run."""
    from gated_lpi_exp.report import build_report

    client = MlflowClient(parent.tracking_uri)
    if (sweep_dir / "multirun.yaml").is_file():
        client.log_artifact(parent.run_id, str(sweep_dir / "multirun.yaml"), "config")
    finished = [r.info.run_id for r in children(client, parent) if r.info.status == "FINISHED"]
    if not finished:
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_report(parent.tracking_uri, run_ids=finished, out_dir=tmp)
        client.log_artifacts(parent.run_id, tmp, "report")


def store_options(parent: SweepParent, experiment: str) -> str:
    """The report's ``--tracking-uri`` / ``--experiment`` options for a parent's store (none for the
    defaults: ./mlflow.db, experiment gated_lpi_exp)."""
    uri = (
        ""
        if parent.tracking_uri == store_key(TrackingConfig().uri)
        else f" --tracking-uri {parent.tracking_uri}"
    )
    return uri + ("" if experiment == TrackingConfig().experiment else f" --experiment {experiment}")


def finish_sweep(sweep_dir: str | os.PathLike[str], aborted: bool = False) -> list[str]:
    """Close every parent run of the sweep in ``sweep_dir``: the comparison logged (unless ``aborted``),
    status set.

    Returns:
        The lines to print: per parent, its sweep id, runs, status, and the commands to look at them.
    """
    folder = Path(sweep_dir).resolve()
    lines = []
    for parent in read_parents(folder):
        try:
            if not aborted:
                log_comparison(parent, folder)
        except Exception as exc:  # the runs are logged; a failed comparison must not hide that
            log.warning("sweep %s: could not log the comparison report to its parent run: %s", folder, exc)
        status = finish_parent(parent, aborted=aborted)
        client = MlflowClient(parent.tracking_uri)
        runs = children(client, parent)
        done = sum(r.info.status == "FINISHED" for r in runs)
        options = store_options(parent, client.get_experiment(parent.experiment_id).name)
        lines += [
            f"Sweep {parent.sweep_id} ({shown_path(folder)}): {done} of {len(runs)} runs finished; "
            f"parent run {status}.",
            f"  compare: python -m gated_lpi_exp.report{options} --sweep {shown_path(folder)}",
            f"  browse:  {browse_hint(parent.tracking_uri, runs_page(parent.experiment_id))}",
        ]
    return lines


class SweepCallback(Callback):
    """Hydra callback closing a sweep's parent runs (see the module docstring)."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        atexit.register(self._aborted)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._aborted)
        if self.sweep_dir is not None:
            print("\n".join(["", *finish_sweep(self.sweep_dir)]), flush=True)

    def _aborted(self) -> None:
        """The sweep stopped before its end (a job raised): its parents end FAILED."""
        if self.sweep_dir is not None:
            for line in finish_sweep(self.sweep_dir, aborted=True):
                log.error("%s", line)
