"""The runs a report shows: their tables (downloaded and validated), and how they form columns.

Runs that share a model and every setting that shapes its results except the ablation and the suite's
training seed (relations, checkpoints, evaluation, attribution, dynamics params, data hash) are one *column*:
a sweep of one model over the three ablations and several seeds then reads as one model, as in the paper,
with each ablation row taken from its run and each value combined over seeds (:mod:`.seeds`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from pandera.errors import SchemaError, SchemaErrors

from gated_lpi_exp.schemas import (
    AblationExamples,
    AblationResult,
    DynamicsCurve,
    DynamicsReplicates,
    DynamicsSummary,
    HitSummary,
    LaggedOverlap,
    LayerProfile,
)
from gated_lpi_exp.tracking.names import ABLATION_TAG, DATA_HASH_PARAM, MODEL_TAG, SUITE_SEED_PARAM

log = logging.getLogger(__name__)

TABLES = {
    "hit_summary": HitSummary,
    "layer_profiles": LayerProfile,
    "dynamics_curves": DynamicsCurve,
    "dynamics_summary": DynamicsSummary,
    "dynamics_lagged": LaggedOverlap,
    "ablation": AblationResult,
    "dynamics_replicates": DynamicsReplicates,
    "ablation_examples": AblationExamples,
}
"""Run artifacts ``tables/<name>.parquet`` the report reads, with their schemas."""
NOT_COMPUTED = "not computed in this run"
_SHAPING_PARAMS = (
    "model.",
    "relations.",
    "checkpoints.",
    "evaluation.",
    "attribution.",
    "dynamics.",
    DATA_HASH_PARAM,
)


def suite_seed(params: dict[str, str]) -> str:
    """A run's suite training seed (``-`` for a model that is not a project suite)."""
    return params.get(SUITE_SEED_PARAM, "-") if params.get("model.kind") == "suite" else "-"


@dataclass
class RunData:
    """One finished run: identity, tags, params and its tables (None where missing, with the reason)."""

    run: Run
    tables: dict[str, pd.DataFrame | None]
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def tags(self) -> dict[str, str]:
        return self.run.data.tags

    @property
    def params(self) -> dict[str, str]:
        return self.run.data.params

    @property
    def model(self) -> str:
        return (
            self.tags.get(MODEL_TAG) or self.params.get("model.name") or self.run.info.run_name or self.run_id
        )

    @property
    def ablation(self) -> str:
        return self.tags.get(ABLATION_TAG) or self.params.get("ablation.name") or "none"

    @property
    def seed(self) -> str:
        """The suite's training seed (``-`` for a model that is not a project suite)."""
        return suite_seed(self.params)


@dataclass
class Column:
    """The runs shown as one column of the report (newest first)."""

    label: str
    runs: list[RunData]
    derived: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)
    """Values computed from the runs' tables, kept so that the tables and the findings compute each once."""

    @property
    def seeds(self) -> list[str]:
        """The suite seeds of this column's runs (one ``-`` for other models), in order."""
        return sorted({r.seed for r in self.runs}, key=lambda s: (len(s), s))

    def table(self, name: str, seed: str | None = None) -> pd.DataFrame | None:
        """The newest run's table (of suite seed ``seed``; None: the first seed); for the ablation tables,
        every run's rows together (one ablation per run)."""
        seed = self.seeds[0] if seed is None else seed
        found = [r.tables[name] for r in self.runs if r.seed == seed and r.tables.get(name) is not None]
        if not found:
            return None
        if name in ("ablation", "ablation_examples"):
            keys = ["step", "ablation", "condition", "seed"]
            keys += ["relation", "sample_id"] if name == "ablation_examples" else []
            return pd.concat(found, ignore_index=True).drop_duplicates(keys)
        return found[0]

    def param(self, key: str) -> str | None:
        """A param of the newest run that logged it."""
        return next((r.params[key] for r in self.runs if key in r.params), None)


def load_run(client: MlflowClient, tracking_uri: str, run: Run) -> RunData:
    """Download and validate a run's tables; a missing or invalid table is None with the reason."""
    present = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "tables")}
    tables: dict[str, pd.DataFrame | None] = {}
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, schema in TABLES.items():
            tables[name] = None
            if f"{name}.parquet" not in present:
                missing[name] = NOT_COMPUTED
                continue
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=f"tables/{name}.parquet",
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
            try:
                tables[name] = schema.check(pd.read_parquet(local))
            except (SchemaError, SchemaErrors) as exc:
                log.warning(
                    "run %s: tables/%s.parquet fails its schema, left out: %s", run.info.run_id, name, exc
                )
                missing[name] = "present but fails its schema (see the log)"
    return RunData(run, tables, missing)


def _group_key(data: RunData) -> tuple:
    shaping = sorted(
        (k, v) for k, v in data.params.items() if k.startswith(_SHAPING_PARAMS) and k != SUITE_SEED_PARAM
    )
    return (data.model, tuple(shaping))


def make_columns(runs: list[RunData]) -> list[Column]:
    """Group runs into columns (runs differing only by ablation share one), ordered by model name.

    A column is labelled by its model; two columns of one model get the newest run id's prefix too.
    """
    groups: dict[tuple, list[RunData]] = {}
    for data in sorted(runs, key=lambda d: -(d.run.info.start_time or 0)):
        groups.setdefault(_group_key(data), []).append(data)
    ordered = sorted(groups.values(), key=lambda g: (g[0].model, -(g[0].run.info.start_time or 0)))
    counts: dict[str, int] = {}
    for group in ordered:
        counts[group[0].model] = counts.get(group[0].model, 0) + 1
    return [
        Column(g[0].model if counts[g[0].model] == 1 else f"{g[0].model} [{g[0].run_id[:8]}]", g)
        for g in ordered
    ]
