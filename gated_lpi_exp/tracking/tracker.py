"""MLflow behind one small service: a run context, flattened params, step metrics, tables, figures and the
run's dataset input."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from gated_lpi_exp.config import TrackingConfig
from gated_lpi_exp.errors import TrackingError
from gated_lpi_exp.tracking.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    RESUMED_BY_TAG,
    SAVED_VIEW_TAG,
)
from gated_lpi_exp.tracking.server import Degraded, bound_http_retries, call_with_deadline, server_reachable
from gated_lpi_exp.tracking.spool import Spool, replay
from gated_lpi_exp.tracking.ui import EXPERIMENT_NOTE, browse_hint, saved_view, ui_path

log = logging.getLogger(__name__)

LOCAL_FALLBACK_URI = "sqlite:///mlflow.db"
_MAX_PARAM_LEN = 6000
T = TypeVar("T")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """The project's one door to MLflow.

    Args:
        cfg: where to track. A server that does not answer fails now (``on_unreachable=fail``), before any
            compute, or is replaced by a local database (``on_unreachable=local``), with a warning.
        spool_root: where calls that a server stopped answering are kept (``<spool_root>/<run id>/``).

    A server that stops answering during a run is retried for ``tracking.timeout_s`` seconds; then the run
    goes on without it, keeping every later call in a local spool (:mod:`gated_lpi_exp.tracking.spool`),
    which is replayed into the run when it ends if the server answers again by then. If it does not, the run
    ends with one :class:`TrackingError` saying where everything is and how to finish; the next run with the
    same settings replays the spool, ends the orphaned MLflow run FAILED and logs a complete run of its own.
    """

    def __init__(self, cfg: TrackingConfig, spool_root: Path | None = None):
        self.uri = cfg.uri
        self.timeout_s = cfg.timeout_s
        self.spool_root = spool_root or Path("mlflow-spool").resolve()
        self.spool: Spool | None = None
        self.run_id = ""
        if cfg.uri.startswith(("http://", "https://")):
            bound_http_retries(cfg.timeout_s)
            if not server_reachable(cfg.uri):
                if cfg.on_unreachable == "fail":
                    raise TrackingError(
                        f"The MLflow tracking server {cfg.uri} does not answer. Start it (see README: mlflow "
                        "server --host 127.0.0.1 ...), or set tracking.on_unreachable=local to log to "
                        "./mlflow.db instead."
                    )
                log.warning(
                    "Tracking server %s does not answer; logging locally to %s", cfg.uri, LOCAL_FALLBACK_URI
                )
                self.uri = LOCAL_FALLBACK_URI
        self.remote = self.uri.startswith(("http://", "https://"))
        # Jobs of a sweep start together: one at a time creates the sqlite schema and the experiment.
        with _sqlite_lock(self.uri):
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._experiment(cfg.experiment, cfg.artifact_location)

    def _experiment(self, name: str, artifact_location: str) -> str:
        try:
            found = self._call(lambda: self.client.get_experiment_by_name(name))
            if found is not None:
                self._describe_experiment(found.experiment_id, found.tags)
                return found.experiment_id
            location = None
            if not self.remote:
                location = (
                    artifact_location
                    if "://" in artifact_location
                    else Path(artifact_location).resolve().as_uri()
                )
            created = self._call(lambda: self.client.create_experiment(name, artifact_location=location))
            self._describe_experiment(created, {})
            return created
        except Exception as exc:
            raise TrackingError(f"Could not open MLflow experiment {name!r} at {self.uri}: {exc}") from exc

    def _describe_experiment(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Mark the experiment as model development (not GenAI) and describe it, unless a user already did."""
        wanted = {
            EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
            NOTE_TAG: EXPERIMENT_NOTE,
            SAVED_VIEW_TAG: saved_view(),
        }
        for key, value in wanted.items():
            if key not in tags:
                self._call(partial(self.client.set_experiment_tag, experiment_id, key, value))

    @property
    def degraded(self) -> bool:
        """Whether the server stopped answering during this run (calls go to the spool)."""
        return self.spool is not None

    @contextmanager
    def run(
        self,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        *,
        parent_run_id: str | None = None,
        description: str | None = None,
        system_metrics: bool = False,
    ) -> Iterator[str]:
        """Open a run; it ends FINISHED, or FAILED (keeping everything logged) when the body raises.

        Args:
            run_name: The run's name in the UI.
            tags: Tags set when the run starts.
            parent_run_id: Nest the run under this one (the parent run of a ``-m`` sweep).
            description: The run's description (``mlflow.note.content``, shown at the top of its page).
            system_metrics: Also log CPU, memory (and GPU, where ``pynvml`` is installed) use every few
                seconds, as ``system/*`` metrics.
        """
        run_id = self._start(run_name, tags, parent_run_id, description)
        monitor = _system_metrics(run_id, self.uri) if system_metrics else None
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if monitor is not None:
                monitor.finish()
            self._end(status)

    def _start(
        self,
        run_name: str,
        tags: Mapping[str, str] | None,
        parent_run_id: str | None,
        description: str | None,
    ) -> str:
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        extra = dict(tags or {})
        if parent_run_id:
            extra[MLFLOW_PARENT_RUN_ID] = parent_run_id
        if description:
            extra[NOTE_TAG] = description
        try:
            run = self._call(
                lambda: self.client.create_run(
                    self.experiment_id, run_name=run_name, tags=resolve_tags(extra)
                )
            )
        except Exception as exc:
            raise TrackingError(f"Could not start an MLflow run at {self.uri}: {exc}") from exc
        self.run_id = run.info.run_id
        return self.run_id

    def run_url(self, run_id: str) -> str:
        """Where a person opens the run (see :func:`browse_hint`)."""
        return browse_hint(self.uri, ui_path(self.experiment_id, run_id))

    def _end(self, status: str) -> None:
        if self.spool is not None:
            self.replay_spool()
        if self.spool is None:
            try:
                self._call(lambda: self.client.set_terminated(self.run_id, status))
                return
            except Degraded:
                pass
        message = (
            f"The MLflow tracking server {self.uri} stopped answering during run {self.run_id}. Everything "
            f"computed is in the result store ({self.spool_root.parent}); what could not be logged is kept in "
            f"{self.spool_root / self.run_id}. Fix: start the server and run the same command again: it takes "
            "every finished checkpoint from the result store (nothing is recomputed), logs a complete run, "
            f"replays the kept calls into run {self.run_id} and ends that run FAILED."
        )
        if status == "FINISHED":
            raise TrackingError(message)
        log.error(message)  # the body's own error is already on its way up

    def replay_spool(self) -> bool:
        """Replay the spool into this run if the server answers again; return whether nothing is pending."""
        if self.spool is None:
            return True
        if server_reachable(self.uri, timeout=2.0) and self._replay(self.spool.folder, self.run_id):
            log.warning(
                "tracking server %s answers again: replayed the calls kept while it was down", self.uri
            )
            self.spool = None
        return self.spool is None

    def _replay(self, folder: Path, run_id: str) -> bool:
        try:
            self._call(lambda: replay(folder, self.client, run_id))
            return True
        except Exception as exc:  # noqa: BLE001 - still down, or the run is gone: keep the spool
            log.warning("could not replay %s into run %s: %s", folder, run_id, exc)
            return False

    def end_orphan(self, run_id: str, status: str, resumed_by: str) -> bool:
        """End a run that an earlier process left RUNNING (killed, or cut off from its server) as ``status``
        (``KILLED`` or ``FAILED``), after replaying what that process kept in its spool, and tag it with the
        run that resumed it.

        Returns:
            Whether the run was found RUNNING and ended.
        """
        folder = self.spool_root / run_id
        if folder.is_dir() and self._replay(folder, run_id):
            log.info("replayed the calls run %s kept while its tracking server was down", run_id)
        try:
            if self._call(lambda: self.client.get_run(run_id)).info.status != "RUNNING":
                return False
            self._call(lambda: self.client.set_tag(run_id, RESUMED_BY_TAG, resumed_by))
            self._call(lambda: self.client.set_terminated(run_id, status=status))
            return True
        except Exception as exc:  # noqa: BLE001 - the run lives in another store, or was deleted
            log.warning("could not end MLflow run %s as %s: %s", run_id, status, exc)
            return False

    def _call(self, request: Callable[[], T]) -> T:
        """``request()``, retried for at most ``tracking.timeout_s`` while a remote server does not answer.

        Raises:
            Degraded: the server did not answer in time (the caller spools what it was logging).
        """
        return call_with_deadline(request, self.timeout_s, retry=self.remote)

    def _send(self, request: Callable[[], object], keep: Callable[[Spool], None]) -> None:
        """Perform a logging call, or keep it in the spool when the server is (or goes) down."""
        if self.spool is None:
            try:
                self._call(request)
                return
            except Degraded as exc:
                self.spool = Spool(self.spool_root / self.run_id)
                log.error(
                    "The MLflow tracking server %s stopped answering for %.0f s (%s). The run goes on; what "
                    "it logs is kept in %s and replayed when the server answers again.",
                    self.uri,
                    self.timeout_s,
                    str(exc)[:200],
                    self.spool.folder,
                )
        keep(self.spool)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; values longer than MLflow allows are cut and marked."""
        clean = {}
        for key, value in params.items():
            text = str(value)
            clean[key] = text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 12] + "...[cut]"
        batch = [Param(k, v) for k, v in clean.items()]
        self._send(lambda: self.client.log_batch(self.run_id, params=batch), lambda s: s.params(clean))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and pd.notna(v)}
        if not finite:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in finite.items()]
        self._send(
            lambda: self.client.log_batch(self.run_id, metrics=batch), lambda s: s.metrics(finite, step, now)
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._send(lambda: self.client.log_batch(self.run_id, tags=batch), lambda s: s.tags(tags))

    def _artifact(self, write: Callable[[Path], object], name: str, folder: str | None) -> None:
        """Log a file that ``write(path)`` makes, as ``<folder>/<name>`` in the run's artifacts."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            write(local)
            self._send(
                lambda: self.client.log_artifact(self.run_id, str(local), folder),
                lambda s: s.file(lambda dst: shutil.copyfile(local, dst), name, folder),
            )

    def log_table(self, table: pd.DataFrame, name: str, folder: str = "tables") -> None:
        """Write ``table`` as ``<folder>/<name>.parquet`` (typed, full precision, for programs) and
        ``<folder>/<name>.csv`` (the same rows with 6 significant digits, which the MLflow UI shows as a
        table) in the run's artifacts."""
        self._artifact(lambda path: table.to_parquet(path, index=False), f"{name}.parquet", folder)
        self._artifact(
            lambda path: table.to_csv(path, index=False, float_format="%.6g"), f"{name}.csv", folder
        )

    def log_dataset(self, samples: pd.DataFrame, name: str, digest: str, source: str) -> None:
        """Record the run's examples as its input dataset (the UI's Dataset column and run page).

        Args:
            samples: The examples.
            name: Dataset name shown in the UI.
            digest: Their fingerprint (equal digests = the same examples).
            source: Where they were read from: a folder or a URL.
        """
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        # MLflow resolves the source: a URL, or a local folder. Its warnings (a folder is both a "local" and
        # a "file" source; integer columns in the schema of a model input) do not apply to examples.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(samples, source=source, name=name, digest=digest)
            entity = DatasetInput(
                dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")]
            )

        def unrecorded(_: Spool) -> None:  # the dataset's digest and name are in the run's params as well
            log.warning("the run's input dataset %s is not recorded: the tracking server is down", name)

        self._send(lambda: self.client.log_inputs(self.run_id, datasets=[entity]), unrecorded)

    def log_arrays(self, arrays: dict, path: str) -> None:
        """Write named numpy arrays as one compressed ``.npz`` artifact at ``path``."""
        import numpy as np

        folder, _, name = path.rpartition("/")
        self._artifact(lambda local: np.savez_compressed(local, **arrays), name, folder or None)

    def log_figure(self, figure, path: str) -> None:
        folder, _, name = path.rpartition("/")
        self._artifact(lambda local: figure.savefig(local), name, folder or None)

    def log_text(self, text: str, path: str) -> None:
        folder, _, name = path.rpartition("/")
        self._artifact(lambda local: local.write_text(text, encoding="utf-8"), name, folder or None)

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        self._artifact(lambda local: shutil.copyfile(path, local), Path(path).name, folder)


class NullTracker(Tracker):
    """A tracker that logs nothing: the non-main processes of a multi-process run (process 0 logs the run)."""

    def __init__(self) -> None:
        self.uri = ""
        self.client = None  # type: ignore[assignment]
        self.experiment_id = ""
        self.spool = None
        self.run_id = ""

    @contextmanager
    def run(
        self,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        *,
        parent_run_id: str | None = None,
        description: str | None = None,
        system_metrics: bool = False,
    ) -> Iterator[str]:
        yield ""

    def end_orphan(self, run_id: str, status: str, resumed_by: str) -> bool:
        return False

    def _send(self, request: Callable[[], object], keep: Callable[[Spool], None]) -> None:
        pass

    def log_dataset(self, samples: pd.DataFrame, name: str, digest: str, source: str) -> None:
        pass

    def run_url(self, run_id: str) -> str:
        return ""

    def _artifact(self, write: Callable[[Path], object], name: str, folder: str | None) -> None:
        pass


def _system_metrics(run_id: str, uri: str):
    """MLflow's monitor of the machine's CPU, memory, disk, network (and GPU) use, logging ``system/*``
    metrics into ``run_id`` every 10 s; None, with a warning, where it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing: the run goes on without them
        log.warning("system metrics are not logged (%s)", exc)
        return None
    return monitor


def _sqlite_lock(uri: str):
    """A file lock beside an ``sqlite:///`` database (a no-op context for other stores)."""
    from contextlib import nullcontext

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    path = Path(uri[len("sqlite:///") :]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")
