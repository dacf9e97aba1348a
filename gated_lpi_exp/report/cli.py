"""``python -m gated_lpi_exp.report``: the command line of :func:`build_report`."""

from __future__ import annotations

import argparse
import logging
import sys

from gated_lpi_exp.console import configure_cli_logging
from gated_lpi_exp.errors import GatedLPIError
from gated_lpi_exp.metrics import MIN_BASE_HIT10
from gated_lpi_exp.report.build import build_report


def parser() -> argparse.ArgumentParser:
    """The report's arguments."""
    p = argparse.ArgumentParser(
        prog="python -m gated_lpi_exp.report",
        description="Compare finished Gated-LPI runs (Tables 2-4, Figs. 1-5) with the paper's numbers.",
    )
    p.add_argument(
        "--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI (default: %(default)s)"
    )
    p.add_argument("--experiment", default="gated_lpi_exp", help="MLflow experiment (default: %(default)s)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument(
        "--runs", nargs="+", metavar="ID", help="exactly these runs (ids or unique id prefixes)"
    )
    pick.add_argument(
        "--sweep",
        metavar="SWEEP",
        help="the runs of one -m sweep: its folder (multirun/<date>/<time>), the folder's name, or its short "
        "id (printed when the sweep ends); default: the latest sweep",
    )
    pick.add_argument(
        "--latest-per-model",
        action="store_true",
        help="the newest run of every model and ablation, whatever sweep it came from",
    )
    p.add_argument(
        "--out", default="report", help="output folder for report.html, report.md, PNGs (default: ./report)"
    )
    p.add_argument(
        "--min-base-hit10",
        type=float,
        default=MIN_BASE_HIT10,
        help="Table 4's second rows: mean over checkpoints whose unablated HIT@10 is at least this "
        "(default: %(default)s); the first rows, as in the paper, average every checkpoint",
    )
    p.add_argument(
        "--log-artifact",
        action="store_true",
        help="also log the report to a new run tagged gated_lpi.report=1",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the report; returns the exit status (0 ok, 2 on a bad selection)."""
    args = parser().parse_args(argv)
    if not logging.getLogger().handlers:
        configure_cli_logging()
    try:
        files = build_report(
            args.tracking_uri,
            args.experiment,
            run_ids=args.runs,
            sweep=args.sweep,
            out_dir=args.out,
            log_artifact=args.log_artifact,
            latest_per_model=args.latest_per_model,
            min_base_hit10=args.min_base_hit10,
        )
    except GatedLPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = f" in {files.sections} sections: their conditions differ" if files.sections > 1 else ""
    print(f"report: {files.html} and {files.markdown} ({len(files.run_ids)} runs{split})")
    if files.report_run_id:
        print(f"logged to MLflow run {files.report_run_id}")
    return 0
