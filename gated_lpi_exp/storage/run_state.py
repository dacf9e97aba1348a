"""The run-state manifest: which checkpoints of a run are finished, and which attempts worked on it.

``<result root>/runs/<key>.json``, keyed by the run's settings and checkpoint list (format
``gated_lpi_exp.runstate/1``)::

    {"format": "gated_lpi_exp.runstate/1", "key": "9c1f...", "description": {...},
     "checkpoints": {"10": {"entry": "<result key>", "rank": 0, "pid": 4242, "at": 1763900000.0}, ...},
     "attempts": [{"run_id": "<mlflow run>", "tracking_uri": "...", "host": "...", "pid": 4242,
                   "started": 1763899000.0, "status": "killed"}, ...]}

Every change is a read-modify-write under a file lock, written atomically, so the processes of a
multi-process run can record their checkpoints in the same file.

What happens to a killed run (:func:`attempt`): a process killed with SIGKILL cannot end its MLflow run, so
that run stays RUNNING and its attempt stays ``running`` here. The next run with the same settings and
checkpoints is a **new** MLflow run, tagged ``gated_lpi.resumed_from=<old run id>``; it reuses every
checkpoint the old one finished (from the result store) and computes the rest. When the old attempt ran on
this host and its process is gone, the old MLflow run is ended as KILLED and tagged
``gated_lpi.resumed_by=<new run id>``. (Its process alive means another run of the same settings is in
progress: it is left alone and the two share finished checkpoints through the store.) A run that failed
(e.g. on a damaged checkpoint) ended FAILED itself; its successor is tagged ``gated_lpi.resumed_from`` too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from gated_lpi_exp.cache import content_key
from gated_lpi_exp.tracking import Tracker

log = logging.getLogger(__name__)

RUNSTATE_FORMAT = "gated_lpi_exp.runstate/1"


@dataclass
class Attempt:
    """One process (process 0 of a multi-process run) working on the run."""

    run_id: str
    """Its MLflow run."""
    tracking_uri: str
    """Where that MLflow run lives."""
    host: str
    pid: int
    started: float
    status: str = "running"
    """``running``, ``finished``, ``failed`` or ``killed`` (found dead by a later attempt)."""


class RunState:
    """The manifest of one run (settings + checkpoint list).

    Args:
        root: The result store's root.
        description: Everything that identifies the run (settings and checkpoints).
    """

    def __init__(self, root: str | Path, description: dict[str, Any]):
        self.description = description
        self.key = content_key(description)
        self.path = Path(root) / "runs" / f"{self.key}.json"

    def read(self) -> dict[str, Any]:
        """The manifest as stored (an empty one when the run never started)."""
        if self.path.is_file():
            return json.loads(self.path.read_text())
        blank = dict(format=RUNSTATE_FORMAT, key=self.key, description=self.description)
        return {**blank, "checkpoints": {}, "attempts": []}

    def _update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            doc = self.read()
            change(doc)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".run.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return doc

    def begin(self, run_id: str, tracking_uri: str) -> Attempt | None:
        """Add this process's attempt; return the previous attempt when it did not finish."""
        previous: list[Attempt] = []

        def add(doc: dict[str, Any]) -> None:
            previous.extend(Attempt(**a) for a in doc["attempts"][-1:] if a["status"] != "finished")
            me = Attempt(run_id, tracking_uri, socket.gethostname(), os.getpid(), time.time())
            doc["attempts"].append(asdict(me))

        self._update(add)
        return previous[0] if previous else None

    def record(self, step: int, entry: str, rank: int = 0) -> None:
        """Note that checkpoint ``step`` is finished, stored under result key ``entry``."""

        def add(doc: dict[str, Any]) -> None:
            doc["checkpoints"][str(step)] = dict(entry=entry, rank=rank, pid=os.getpid(), at=time.time())

        self._update(add)

    def set_status(self, run_id: str, status: str) -> None:
        """Set the status of the attempt of MLflow run ``run_id``."""

        def change(doc: dict[str, Any]) -> None:
            for a in doc["attempts"]:
                if a["run_id"] == run_id:
                    a["status"] = status

        self._update(change)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def settle_previous(state: RunState, tracker: Tracker, previous: Attempt, run_id: str) -> str | None:
    """Decide what an unfinished earlier attempt is; return its run id when this run resumes it."""
    here = previous.host == socket.gethostname()
    if previous.status == "running" and here and process_alive(previous.pid):
        log.warning(
            "run %s (pid %d) with the same settings is still running; both share finished checkpoints "
            "through the result store",
            previous.run_id,
            previous.pid,
        )
        return None
    if previous.status == "running" and here:
        state.set_status(previous.run_id, "killed")
        if previous.tracking_uri == tracker.uri and tracker.mark_killed(previous.run_id, resumed_by=run_id):
            log.info("MLflow run %s was left RUNNING by a killed process; marked KILLED", previous.run_id)
    log.info(
        "resuming run %s (%s): checkpoints it finished come from the result store",
        previous.run_id,
        previous.status,
    )
    tracker.set_tags({"gated_lpi.resumed_from": previous.run_id})
    return previous.run_id


@contextmanager
def attempt(state: RunState, tracker: Tracker, run_id: str) -> Iterator[str | None]:
    """Record this run's attempt for its whole body (``finished`` or ``failed``); yield the id of the run it
    resumes, if any. Process 0 only."""
    previous = state.begin(run_id, tracker.uri)
    resumed = settle_previous(state, tracker, previous, run_id) if previous is not None else None
    try:
        yield resumed
    except BaseException:
        state.set_status(run_id, "failed")
        raise
    state.set_status(run_id, "finished")
