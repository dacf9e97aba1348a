"""What a run could not log while its tracking server was down, kept on disk and replayed later.

A spool is a folder ``<result root>/spool/<run id>/``: ``calls.jsonl`` (one JSON object per logging call,
in order: params, metrics with their step and time, tags, artifacts) and ``files/`` (each artifact's file).
Replaying it performs the same calls on the run, in the same order. A line that cannot be read is reported
and skipped; the files it names stay in the folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CALLS = "calls.jsonl"


class Spool:
    """An append-only record of logging calls for one run."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "files").mkdir(parents=True, exist_ok=True)

    def _append(self, call: dict[str, Any]) -> None:
        with open(self.folder / CALLS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(call, default=str) + "\n")
            fh.flush()

    def params(self, params: Mapping[str, str]) -> None:
        self._append({"op": "params", "data": dict(params)})

    def metrics(self, metrics: Mapping[str, float], step: int | None, time_ms: int | None = None) -> None:
        """Keep metric points; ``time_ms`` is the timestamp the failed call carried (a point the server did
        store before it stopped answering is then the same point on replay, and MLflow keeps it once)."""
        when = int(time.time() * 1000) if time_ms is None else time_ms
        self._append({"op": "metrics", "data": dict(metrics), "step": step, "time": when})

    def tags(self, tags: Mapping[str, str]) -> None:
        self._append({"op": "tags", "data": dict(tags)})

    def file(self, make: Callable[[Path], object], name: str, folder: str | None) -> None:
        """Keep an artifact: ``make(path)`` writes it to a new place in the spool."""
        index = sum(1 for _ in (self.folder / "files").iterdir())
        target = self.folder / "files" / f"{index:06d}" / name
        target.parent.mkdir(parents=True)
        make(target)
        self._append({"op": "artifact", "file": str(target.relative_to(self.folder)), "folder": folder})


def spooled_calls(folder: Path) -> int:
    """How many calls a spool holds (0 when there is none)."""
    path = folder / CALLS
    return sum(1 for _ in open(path, encoding="utf-8")) if path.is_file() else 0


def replay(folder: Path, client: MlflowClient, run_id: str) -> int:
    """Perform every spooled call on ``run_id``, then remove the spool; return how many were replayed.

    Raises:
        Exception: whatever the client raises (the spool is kept, and can be replayed again; calls already
            replayed are replayed again then, which MLflow takes as the same params and the same metric
            points: a point is its key, value, step and original timestamp, and MLflow stores it once).
    """
    path = folder / CALLS
    if not path.is_file():
        return 0
    done = 0
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            call = json.loads(line)
            op = call["op"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("spool %s line %d is unreadable (%s); skipped", path, number, exc)
            continue
        if op == "params":
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in call["data"].items()])
        elif op == "metrics":
            metrics = [Metric(k, float(v), call["time"], call["step"] or 0) for k, v in call["data"].items()]
            client.log_batch(run_id, metrics=metrics)
        elif op == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in call["data"].items()])
        elif op == "artifact":
            client.log_artifact(run_id, str(folder / call["file"]), call["folder"])
        done += 1
    shutil.rmtree(folder, ignore_errors=True)
    return done
