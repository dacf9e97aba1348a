"""Where the MLflow UI shows a run: the routes to open, the experiment's description and its saved view of
the results (the runs page otherwise shows no metric columns until a person picks some)."""

from __future__ import annotations

import json
import time

from gated_lpi_exp.tracking.names import RESULT_COLUMNS, SAVED_VIEW_TAG

EXPERIMENT_NOTE = (
    "Gated-LPI attribution over pre-training checkpoint series (gated_lpi_exp): one run per model, relation "
    "set and ablation; the runs of a `-m` sweep are nested under one parent run. Metrics are fractions "
    "(0.25 = 25%), logged with step = training step."
)
"""The description a new experiment gets (``mlflow.note.content``)."""


def saved_view() -> str:
    """The saved view of :data:`SAVED_VIEW_TAG` in the MLflow UI's format (an envelope holding the view's
    state as JSON: the selected columns, keyed ``<kind>.`<name>```)."""
    columns = ["attributes.`Dataset`", "params.`model.name`", "params.`relations.categories`"]
    columns += ["params.`ablation.name`"]
    columns += [f"metrics.`{name}`" for name in RESULT_COLUMNS]
    now = int(time.time() * 1000)
    state = json.dumps({"selectedColumns": columns})
    return json.dumps({"name": "Gated-LPI results", "createdAt": now, "updatedAt": now, "state": state})


def runs_page(experiment_id: str) -> str:
    """The UI route of the experiment's runs, in the results view."""
    key = SAVED_VIEW_TAG.rpartition(".")[2]
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"


def browse_hint(uri: str, route: str) -> str:
    """Where to open a UI route (:func:`ui_path`, :func:`runs_page`): its URL on a tracking server, else the
    command that serves the store and the URL to open then."""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{route}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open http://127.0.0.1:5000/{route}"


def ui_path(experiment_id: str, run_id: str) -> str:
    """The UI route of a run, opened in the UI's model-training view (MLflow 3's UI opens an experiment in
    its GenAI view unless told otherwise)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
