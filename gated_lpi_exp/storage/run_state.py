"""The run-state manifest: which checkpoints of a run are finished, and which attempts worked on it.

``<result root>/runs/<key>.json``, keyed by the run's settings and checkpoint list (format
``gated_lpi_exp.runstate/1``)::

    {"format": "gated_lpi_exp.runstate/1", "key": "9c1f...", "description": {...},
     "checkpoints": {"10": {"entry": "<result key>", "rank": 0, "pid": 4242, "at": 1763900000.0}, ...},
     "attempts": [{"run_id": "<mlflow run>", "tracking_uri": "...", "host": "...", "pid": 4242,
                   "started": 1763899000.0, "status": "killed"}, ...],
     "sha256": "<sha256 of the other fields>"}

Every change is a read-modify-write under a file lock, written atomically, so the processes of a
multi-process run can record their checkpoints in the same file. A manifest that cannot be read (cut short,
overwritten, not this run's: each manifest carries a sha256 of itself) is reported once, naming the file, and
read as a blank one: it is bookkeeping only (every finished checkpoint is in the result store, keyed by its
inputs), so the run goes on and the next write replaces it.

What a killed or failed run leaves here, and how the next run resumes it:
:mod:`gated_lpi_exp.execution.attempts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from gated_lpi_exp.storage.arrays import content_key

log = logging.getLogger(__name__)

RUNSTATE_FORMAT = "gated_lpi_exp.runstate/1"
_STATUSES = ("running", "finished", "failed", "killed")


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
        """The manifest as stored (a blank one when the run never started, or when the file is damaged)."""
        blank = dict(format=RUNSTATE_FORMAT, key=self.key, description=self.description)
        blank = {**blank, "checkpoints": {}, "attempts": []}
        if not self.path.is_file():
            return blank
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            _check(doc, self.key)
            if "sha256" in doc and doc["sha256"] != _self_checksum(doc):
                raise ValueError("its content does not match its sha256 field")
        except Exception as exc:  # noqa: BLE001 - any damage: report it, start the bookkeeping afresh
            if str(self.path) not in _reported:
                _reported.add(str(self.path))
                log.warning(
                    "run-state file %s is damaged (%s: %s); starting it afresh (finished checkpoints "
                    "come from the result store all the same)",
                    self.path,
                    type(exc).__name__,
                    exc,
                )
            return blank
        return doc

    def _update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            doc = self.read()
            change(doc)
            doc["sha256"] = _self_checksum(doc)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".run.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
                _reported.discard(str(self.path))  # whole again: a later damage is news
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


_reported: set[str] = set()


def _self_checksum(doc: dict[str, Any]) -> str:
    """sha256 of the manifest without its own ``sha256`` field, so any change to it is noticed."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check(doc: Any, key: str) -> None:
    """Raise ValueError unless ``doc`` is a run-state manifest of run ``key``."""
    if not isinstance(doc, dict) or doc.get("format") != RUNSTATE_FORMAT or doc.get("key") != key:
        raise ValueError("not this run's run-state manifest")
    checkpoints, attempts = doc.get("checkpoints"), doc.get("attempts")
    if not isinstance(checkpoints, dict) or not isinstance(attempts, list):
        raise ValueError("checkpoints must be an object and attempts a list")
    for step, entry in checkpoints.items():
        int(step)
        if not isinstance(entry, dict) or not isinstance(entry.get("entry"), str):
            raise ValueError(f"checkpoint {step!r} is malformed")
    for item in attempts:
        attempt = Attempt(**item)
        if attempt.status not in _STATUSES or not isinstance(attempt.pid, int):
            raise ValueError(f"attempt {item!r} is malformed")
