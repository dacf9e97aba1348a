"""Which MLflow runs a report shows: given ids (or unique prefixes), a sweep (named by its folder, the
folder's name or its short id), or by default the latest sweep.

A sweep is the set of runs sharing the tag ``gated_lpi.sweep`` (the sweep folder); its short id is the first
8 characters of its parent run's id, printed when the sweep ends. A run outside any sweep counts as a sweep
of one. Only FINISHED runs are read; parent runs and report runs never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.tracking.names import ABLATION_TAG, MODEL_TAG, REPORT_TAG, SWEEP_PARENT_TAG, SWEEP_TAG

_FINISHED = "attributes.status = 'FINISHED'"
MIN_PREFIX = 4
"""Shortest run-id or sweep-id prefix accepted."""


@dataclass
class Selection:
    """The runs to report and how they were chosen, in words."""

    runs: list[Run]
    how: str


@dataclass
class Sweep:
    """A sweep as the report lists it."""

    folder: str
    """The ``gated_lpi.sweep`` tag: the sweep folder's absolute path."""
    parent_id: str
    """Its parent run's id ("" for sweeps logged before parent runs existed)."""
    runs: int
    started: int
    """Start time of its newest run, ms since the epoch."""

    def line(self) -> str:
        """``3f2a9c1b  multirun/2026-01-31/10-00-00  (2 runs, 2026-01-31 10:00)``."""
        when = datetime.fromtimestamp(self.started / 1000).strftime("%Y-%m-%d %H:%M")
        short = self.parent_id[:8] or "-" * 8
        return f"{short}  {shown(self.folder)}  ({self.runs} run{'s' if self.runs != 1 else ''}, {when})"


def shown(folder: str) -> str:
    """A folder relative to the working folder when inside it."""
    path = Path(folder)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else folder


def search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every matching run, newest first, except parent and report runs."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, order_by=["attributes.start_time DESC"], page_token=token
        )
        runs += page
        token = page.token
        if not token:
            tags = (REPORT_TAG, SWEEP_PARENT_TAG)
            return [r for r in runs if not any(r.data.tags.get(t) == "1" for t in tags)]


def known_sweeps(client: MlflowClient, experiment_id: str) -> list[Sweep]:
    """Every sweep of the experiment with FINISHED runs, newest first."""
    sweeps: dict[str, Sweep] = {}
    for run in search(client, experiment_id, _FINISHED):
        folder = run.data.tags.get(SWEEP_TAG)
        if folder:
            found = sweeps.setdefault(folder, Sweep(folder, "", 0, run.info.start_time or 0))
            found.runs += 1
            found.parent_id = found.parent_id or run.data.tags.get("mlflow.parentRunId", "")
    return list(sweeps.values())


def find_sweep(client: MlflowClient, experiment_id: str, text: str) -> Sweep:
    """The sweep ``text`` names: its folder (absolute or relative to here), the folder's last parts
    (``10-00-00``, ``2026-01-31/10-00-00``), or a prefix of its id.

    Raises:
        ConfigurationError: No sweep or several match; the message lists the known sweeps.
    """
    sweeps = known_sweeps(client, experiment_id)
    tail = text.strip().rstrip("/")
    here = str(Path(tail).expanduser().resolve())
    matches = [s for s in sweeps if s.folder in (tail, here)]
    matches = matches or [s for s in sweeps if tail and s.folder.endswith("/" + tail)]
    if not matches and len(tail) >= MIN_PREFIX:
        matches = [s for s in sweeps if s.parent_id.startswith(tail)]
    if len(matches) == 1:
        return matches[0]
    listing = "\n".join("  " + s.line() for s in (matches or sweeps)[:15]) or "  (none)"
    problem = "matches several sweeps" if matches else "matches no sweep with finished runs"
    raise ConfigurationError(
        f"--sweep {text!r} {problem}. Known sweeps (id, folder), newest first:\n{listing}\n"
        "Pass a folder (multirun/<date>/<time>), its last part, or an id."
    )


def resolve_run_ids(client: MlflowClient, experiment_id: str | None, ids: list[str]) -> list[Run]:
    """Runs by full id or unique prefix (prefixes are looked up in ``experiment_id``)."""
    candidates = search(client, experiment_id, "") if experiment_id and any(len(i) < 32 for i in ids) else []
    runs = []
    for given in ids:
        if len(given) == 32:
            runs.append(client.get_run(given))
            continue
        found = [r for r in candidates if r.info.run_id.startswith(given)] if len(given) >= MIN_PREFIX else []
        if len(found) != 1:
            what = "several runs" if found else "no run"
            raise ConfigurationError(f"--runs {given!r} matches {what}; give more of the run id.")
        runs.append(found[0])
    return runs


def select_runs(
    client: MlflowClient,
    experiment: str,
    run_ids: list[str] | None = None,
    sweep: str | None = None,
    latest_per_model: bool = False,
) -> Selection:
    """The runs to report: ``run_ids``, else a sweep's, else the newest run per (model, ablation) with
    ``latest_per_model``, else the latest sweep's (a run outside any sweep being a sweep of one).

    Raises:
        ConfigurationError: Unknown experiment, a given run that is not FINISHED, or nothing selected.
    """
    found = client.get_experiment_by_name(experiment)
    if run_ids:
        runs = resolve_run_ids(client, found.experiment_id if found else None, run_ids)
        unfinished = [f"{r.info.run_id} ({r.info.status})" for r in runs if r.info.status != "FINISHED"]
        if unfinished:
            raise ConfigurationError(
                f"The report reads FINISHED runs only; not finished: {', '.join(unfinished)}"
            )
        return Selection(runs, "the given runs")
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigurationError(f"No MLflow experiment {experiment!r}; known: {names}. Pass --experiment.")
    if sweep is not None:
        chosen = find_sweep(client, found.experiment_id, sweep)
        return Selection(_sweep_runs(client, found.experiment_id, chosen.folder), f"sweep {chosen.line()}")
    finished = search(client, found.experiment_id, _FINISHED)
    if not finished:
        raise ConfigurationError(f"No FINISHED runs in experiment {experiment!r}.")
    if latest_per_model:
        newest: dict[tuple[str, str], Run] = {}
        for run in finished:
            if MODEL_TAG in run.data.tags:
                newest.setdefault((run.data.tags[MODEL_TAG], run.data.tags.get(ABLATION_TAG, "none")), run)
        return Selection(list(newest.values()), "the newest run per model and ablation")
    latest = finished[0]
    folder = latest.data.tags.get(SWEEP_TAG)
    if folder is None:
        return Selection([latest], f"the latest run {latest.info.run_id[:8]} (not part of a sweep)")
    chosen = next(s for s in known_sweeps(client, found.experiment_id) if s.folder == folder)
    return Selection(_sweep_runs(client, found.experiment_id, folder), f"the latest sweep, {chosen.line()}")


def _sweep_runs(client: MlflowClient, experiment_id: str, folder: str) -> list[Run]:
    if "'" in folder:
        return [r for r in search(client, experiment_id, _FINISHED) if r.data.tags.get(SWEEP_TAG) == folder]
    return search(client, experiment_id, f"{_FINISHED} and tags.`{SWEEP_TAG}` = '{folder}'")
