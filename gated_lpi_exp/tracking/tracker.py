"""MLflow behind one small service: a run context, flattened params, step metrics, tables, figures and the
run's dataset input."""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from filelock import FileLock
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
from gated_lpi_exp.tracking.ui import EXPERIMENT_NOTE, browse_hint, saved_view, ui_path

log = logging.getLogger(__name__)

LOCAL_FALLBACK_URI = "sqlite:///mlflow.db"
_MAX_PARAM_LEN = 6000


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


def server_reachable(uri: str, timeout: float = 5.0) -> bool:
    """Whether an ``http(s)://`` tracking server answers its health check."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Tracker:
    """The project's one door to MLflow.

    Args:
        cfg: where to track. A server that does not answer fails now (``on_unreachable=fail``), before any
            compute, or is replaced by a local database (``on_unreachable=local``), with a warning.
    """

    def __init__(self, cfg: TrackingConfig):
        self.uri = cfg.uri
        if cfg.uri.startswith(("http://", "https://")) and not server_reachable(cfg.uri):
            if cfg.on_unreachable == "fail":
                raise TrackingError(
                    f"The MLflow tracking server {cfg.uri} does not answer. Start it (see README: mlflow server "
                    "--host 127.0.0.1 ...), or set tracking.on_unreachable=local to log to ./mlflow.db instead."
                )
            log.warning(
                "Tracking server %s does not answer; logging locally to %s", cfg.uri, LOCAL_FALLBACK_URI
            )
            self.uri = LOCAL_FALLBACK_URI
        # Jobs of a sweep start together: one at a time creates the sqlite schema and the experiment.
        with _sqlite_lock(self.uri):
            mlflow.set_tracking_uri(self.uri)
            self.client = MlflowClient(self.uri)
            self.experiment_id = self._experiment(cfg.experiment, cfg.artifact_location)

    def _experiment(self, name: str, artifact_location: str) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self._describe_experiment(found.experiment_id, found.tags)
                return found.experiment_id
            location = None
            if not self.uri.startswith(("http://", "https://")):
                location = (
                    artifact_location
                    if "://" in artifact_location
                    else Path(artifact_location).resolve().as_uri()
                )
            created = self.client.create_experiment(name, artifact_location=location)
            self._describe_experiment(created, {})
            return created
        except Exception as exc:
            raise TrackingError(f"Could not open MLflow experiment {name!r} at {self.uri}: {exc}") from exc

    def _describe_experiment(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Mark the experiment as model development (not GenAI) and describe it, unless a user already did."""
        if EXPERIMENT_KIND_TAG not in tags:
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if NOTE_TAG not in tags:
            self.client.set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_NOTE)
        if SAVED_VIEW_TAG not in tags:
            self.client.set_experiment_tag(experiment_id, SAVED_VIEW_TAG, saved_view())

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
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=run_name,
            tags=dict(tags or {}),
            parent_run_id=parent_run_id,
            description=description,
            log_system_metrics=system_metrics,
        ) as run:
            yield run.info.run_id

    def run_url(self, run_id: str) -> str:
        """Where a person opens the run (see :func:`browse_hint`)."""
        return browse_hint(self.uri, ui_path(self.experiment_id, run_id))

    def mark_killed(self, run_id: str, resumed_by: str) -> bool:
        """End a run left RUNNING by a killed process as KILLED, tagged with the run that resumed it.

        Returns:
            Whether the run was found RUNNING and marked.
        """
        try:
            if self.client.get_run(run_id).info.status != "RUNNING":
                return False
            self.client.set_tag(run_id, RESUMED_BY_TAG, resumed_by)
            self.client.set_terminated(run_id, status="KILLED")
            return True
        except Exception as exc:  # the run lives in another store, or was deleted
            log.warning("could not mark MLflow run %s as KILLED: %s", run_id, exc)
            return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; values longer than MLflow allows are cut and marked."""
        clean = {}
        for key, value in params.items():
            text = str(value)
            clean[key] = text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 12] + "...[cut]"
        mlflow.log_params(clean)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and pd.notna(v)}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow.set_tags(dict(tags))

    def log_table(self, table: pd.DataFrame, name: str, folder: str = "tables") -> None:
        """Write ``table`` as ``<folder>/<name>.parquet`` (typed, full precision, for programs) and
        ``<folder>/<name>.csv`` (the same rows with 6 significant digits, which the MLflow UI shows as a
        table) in the run's artifacts."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.parquet")
            table.to_parquet(path, index=False)
            table.to_csv(os.path.join(tmp, f"{name}.csv"), index=False, float_format="%.6g")
            mlflow.log_artifacts(tmp, artifact_path=folder)

    def log_dataset(self, samples: pd.DataFrame, name: str, digest: str, source: str) -> None:
        """Record the run's examples as its input dataset (the UI's Dataset column and run page).

        Args:
            samples: The examples.
            name: Dataset name shown in the UI.
            digest: Their fingerprint (equal digests = the same examples).
            source: Where they were read from: a folder or a URL.
        """
        from mlflow.data.pandas_dataset import from_pandas

        # MLflow resolves the source: a URL, or a local folder. Its warnings (a folder is both a "local" and
        # a "file" source; integer columns in the schema of a model input) do not apply to examples.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(samples, source=source, name=name, digest=digest)
            mlflow.log_input(dataset, context="evaluation")

    def log_arrays(self, arrays: dict, path: str) -> None:
        """Write named numpy arrays as one compressed ``.npz`` artifact at ``path``."""
        import numpy as np

        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            np.savez_compressed(local, **arrays)
            mlflow.log_artifact(local, artifact_path=folder or None)

    def log_figure(self, figure, path: str) -> None:
        mlflow.log_figure(figure, path)

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)


class NullTracker(Tracker):
    """A tracker that logs nothing: the non-main processes of a multi-process run (process 0 logs the run)."""

    def __init__(self) -> None:
        self.uri = ""
        self.client = None  # type: ignore[assignment]
        self.experiment_id = ""

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

    def mark_killed(self, run_id: str, resumed_by: str) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_table(self, table: pd.DataFrame, name: str, folder: str = "tables") -> None:
        pass

    def log_dataset(self, samples: pd.DataFrame, name: str, digest: str, source: str) -> None:
        pass

    def run_url(self, run_id: str) -> str:
        return ""

    def log_arrays(self, arrays: dict, path: str) -> None:
        pass

    def log_figure(self, figure, path: str) -> None:
        pass

    def log_text(self, text: str, path: str) -> None:
        pass

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        pass


def _sqlite_lock(uri: str):
    """A file lock beside an ``sqlite:///`` database (a no-op context for other stores)."""
    from contextlib import nullcontext

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    path = Path(uri[len("sqlite:///") :]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")
