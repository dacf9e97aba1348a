"""The parent MLflow run of a ``-m`` sweep: one per sweep folder (and tracking store), found or created by
whichever job gets there first, its jobs' runs nested under it.

Jobs of a sweep may be separate processes (the ``local`` and ``slurm`` launchers), so the parent is
recorded in a file in the sweep folder, ``mlflow_sweep.json``, read and written under a file lock beside
it: the first job creates the parent, the others read its id. The file also lets the report find a sweep's
runs from the folder's path. When the sweep ends, :func:`finish_parents` closes every recorded parent.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from gated_lpi_exp import __version__
from gated_lpi_exp.tracking.names import (
    NOTE_TAG,
    OVERRIDES_TAG,
    PARENT_RUN_TAG,
    SWEEP_PARENT_TAG,
    SWEEP_TAG,
    VERSION_TAG,
)
from gated_lpi_exp.tracking.tracker import Tracker

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
"""In the sweep folder: the parent run of each tracking store the sweep's jobs logged to."""


@dataclass(frozen=True)
class SweepParent:
    """One parent run of a sweep."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    @property
    def sweep_id(self) -> str:
        """The short id people type: the first 8 characters of the parent run's id."""
        return self.run_id[:8]


def store_key(uri: str) -> str:
    """A tracking URI that names the same store from any working folder (``sqlite:///rel.db`` made
    absolute)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    return uri


def read_parents(sweep_dir: str | os.PathLike[str]) -> list[SweepParent]:
    """The parents recorded in a sweep folder (none when no job has logged yet)."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return []
    try:
        return [SweepParent(**entry) for entry in json.loads(path.read_text())["parents"]]
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is damaged (%s); a new parent run is recorded in its place", path, exc)
        return []


def sweep_overrides(sweep_dir: str | os.PathLike[str]) -> str:
    """The sweep's command-line overrides, from the ``multirun.yaml`` Hydra writes in its folder."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return ""
    try:
        task = OmegaConf.load(path).hydra.overrides.task
    except Exception:  # an unreadable file only costs the description
        return ""
    return " ".join(str(t) for t in task)


def sweep_parent(tracker: Tracker, sweep_dir: str | os.PathLike[str]) -> str:
    """The id of the sweep's parent run in ``tracker``'s experiment, created by the first job to ask.

    Args:
        tracker: Where the job logs.
        sweep_dir: The sweep folder (``hydra.sweep.dir``), shared by every job of the sweep.

    Returns:
        The parent's run id.
    """
    folder = Path(sweep_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    key = store_key(tracker.uri)
    with FileLock(str(folder / f".{SWEEP_FILE}.lock")):
        parents = read_parents(folder)
        for parent in parents:
            if (parent.tracking_uri, parent.experiment_id) == (key, tracker.experiment_id):
                # A sweep folder run again (a fixed hydra.sweep.dir): its parent runs again too.
                if tracker.client.get_run(parent.run_id).info.status != "RUNNING":
                    tracker.client.update_run(parent.run_id, status="RUNNING")
                return parent.run_id
        overrides = sweep_overrides(folder) or "(defaults)"
        tags = {
            SWEEP_TAG: str(folder),
            SWEEP_PARENT_TAG: "1",
            OVERRIDES_TAG: overrides,
            VERSION_TAG: __version__,
            NOTE_TAG: f"Sweep `{overrides}` in {folder}: one nested run per job.",
        }
        run = tracker.client.create_run(
            tracker.experiment_id, run_name=f"sweep {folder.parent.name}/{folder.name}", tags=tags
        )
        parents.append(SweepParent(key, tracker.experiment_id, run.info.run_id))
        _write_parents(folder, parents)
    log.info("sweep %s: parent MLflow run %s", folder, run.info.run_id)
    return run.info.run_id


def _write_parents(folder: Path, parents: list[SweepParent]) -> None:
    tmp = folder / f".{SWEEP_FILE}.tmp"
    tmp.write_text(json.dumps({"parents": [asdict(p) for p in parents]}, indent=1))
    tmp.replace(folder / SWEEP_FILE)


def children(client: MlflowClient, parent: SweepParent) -> list:
    """The runs nested under ``parent``, oldest first."""
    return client.search_runs(
        [parent.experiment_id],
        f"tags.`{PARENT_RUN_TAG}` = '{parent.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def finish_parent(parent: SweepParent, aborted: bool = False) -> str:
    """End a parent run: FINISHED when every job's run finished, else FAILED (``aborted``: the sweep
    stopped early). A parent that already ended is left as it is.

    Returns:
        The status it has now.
    """
    client = MlflowClient(parent.tracking_uri)
    run = client.get_run(parent.run_id)
    if run.info.status != "RUNNING":
        return run.info.status
    statuses = [r.info.status for r in children(client, parent)]
    ok = not aborted and statuses and all(s == "FINISHED" for s in statuses)
    status = "FINISHED" if ok else "FAILED"
    client.set_terminated(parent.run_id, status=status)
    return status
