"""The attempts of a run: each process 0 that works on it is recorded in its run-state manifest.

What happens to a killed run (:func:`attempt`): a process killed with SIGKILL cannot end its MLflow run, so
that run stays RUNNING and its attempt stays ``running`` in the manifest. The next run with the same settings and
checkpoints is a **new** MLflow run, tagged ``gated_lpi.resumed_from=<old run id>``; it reuses every
checkpoint the old one finished (from the result store) and computes the rest. When the old attempt ran on
this host and its process is gone, the old MLflow run is ended as KILLED and tagged
``gated_lpi.resumed_by=<new run id>``. (Its process alive means another run of the same settings is in
progress: it is left alone and the two share finished checkpoints through the store.) A run that failed
(e.g. on a damaged checkpoint) ended FAILED itself; its successor is tagged ``gated_lpi.resumed_from`` too.
A run whose tracking server stopped answering could not end its MLflow run: its attempt is ``failed`` and
its run still RUNNING, so the next run replays what it kept in its spool and ends it FAILED
(:meth:`gated_lpi_exp.tracking.tracker.Tracker.end_orphan`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from gated_lpi_exp.storage.run_state import Attempt, RunState
from gated_lpi_exp.tracking.names import RESUMED_FROM_TAG
from gated_lpi_exp.tracking.tracker import Tracker

log = logging.getLogger(__name__)


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
    killed = previous.status == "running" and here
    if killed:
        state.set_status(previous.run_id, "killed")
    if (killed or previous.status == "failed") and previous.tracking_uri == tracker.uri:
        status = "KILLED" if killed else "FAILED"
        if tracker.end_orphan(previous.run_id, status, resumed_by=run_id):
            log.info(
                "MLflow run %s was left RUNNING by an earlier process; ended it %s", previous.run_id, status
            )
    log.info(
        "resuming run %s (%s): checkpoints it finished come from the result store",
        previous.run_id,
        previous.status,
    )
    tracker.set_tags({RESUMED_FROM_TAG: previous.run_id})
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
    # Cut off from its tracking server and still cut off: its MLflow run cannot be ended, a later run will.
    state.set_status(run_id, "finished" if tracker.replay_spool() else "failed")
