"""Build a report from MLflow runs: select -> download, validate -> tables, figures -> HTML + Markdown."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mlflow.tracking import MlflowClient

from gated_lpi_exp import __version__
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.metrics import MIN_BASE_HIT10
from gated_lpi_exp.report.figures import render_figures
from gated_lpi_exp.report.findings import findings_table
from gated_lpi_exp.report.render import Header, ReportPart, render_html, render_markdown
from gated_lpi_exp.report.runs import load_run
from gated_lpi_exp.report.sections import explain, split_sections
from gated_lpi_exp.report.select import select_runs
from gated_lpi_exp.report.tables import build_tables
from gated_lpi_exp.tracking.names import REPORT_RUNS_TAG, REPORT_TAG, VERSION_TAG

log = logging.getLogger(__name__)

HTML_NAME, MARKDOWN_NAME = "report.html", "report.md"


@dataclass
class ReportFiles:
    """Where the report went."""

    html: Path
    markdown: Path
    run_ids: list[str]
    report_run_id: str | None = None
    """The MLflow run holding the report, with ``log_artifact``."""
    sections: int = 1
    """How many sections (conditions) the report has."""


def build_report(
    tracking_uri: str = "sqlite:///mlflow.db",
    experiment: str = "gated_lpi_exp",
    *,
    run_ids: list[str] | None = None,
    sweep: str | None = None,
    out_dir: str | Path = "report",
    log_artifact: bool = False,
    latest_per_model: bool = False,
    min_base_hit10: float = MIN_BASE_HIT10,
) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ figure PNGs) for the selected runs.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: Experiment searched when ``run_ids`` is not given.
        run_ids: Exactly these runs (FINISHED only), by id or unique id prefix.
        sweep: The FINISHED runs of a sweep: its folder (absolute or relative), the folder's name, or the
            sweep's short id. With neither, the latest sweep's runs.
        out_dir: Output folder (created).
        log_artifact: Also log the folder to a new run of ``experiment`` tagged ``gated_lpi.report=1``.
        latest_per_model: Instead of the latest sweep, the newest FINISHED run per (model, ablation, suite
            seed).
        min_base_hit10: Table 4's second rows average the checkpoints whose unablated HIT@10 is at least this.

    Runs measured under different conditions (examples, relations, checkpoint selection, protocol) are
    shown in separate sections, never in one table (:mod:`.sections`).

    Raises:
        ConfigurationError: Nothing to report, or an unknown experiment / unfinished run.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per table is noise here
    client = MlflowClient(tracking_uri)
    selection = select_runs(client, experiment, run_ids, sweep, latest_per_model)
    runs = selection.runs
    log.info("report: %s: %d run(s): %s", selection.how, len(runs), ", ".join(r.info.run_id for r in runs))
    sections = split_sections([load_run(client, tracking_uri, r) for r in runs])
    if len(sections) > 1:
        log.warning("report: %s", explain(sections))
    parts = [
        ReportPart(
            s.columns,
            build_tables(s.columns, min_base_hit10),
            render_figures(s.columns),
            s.differs,
            findings_table(s.columns, min_base_hit10),
        )
        for s in sections
    ]
    header = Header(
        datetime.now(timezone.utc), __version__, tracking_uri, experiment, selection.how, explain(sections)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / HTML_NAME, out / MARKDOWN_NAME
    html_path.write_text(render_html(header, parts), encoding="utf-8")
    md_path.write_text(render_markdown(header, parts, out), encoding="utf-8")
    files = ReportFiles(html_path, md_path, [r.info.run_id for r in runs], sections=len(sections))
    if log_artifact:
        files.report_run_id = _log_report(client, experiment, out, files.run_ids)
    return files


def _log_report(client: MlflowClient, experiment: str, out: Path, run_ids: list[str]) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigurationError(
            f"--log-artifact: no MLflow experiment {experiment!r} to log the report into."
        )
    tags = {REPORT_TAG: "1", REPORT_RUNS_TAG: ",".join(run_ids), VERSION_TAG: __version__}
    run = client.create_run(found.experiment_id, run_name=f"report-{datetime.now():%Y%m%d-%H%M%S}", tags=tags)
    try:
        client.log_artifacts(run.info.run_id, str(out), artifact_path="report")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    log.info("report logged to run %s", run.info.run_id)
    return run.info.run_id
