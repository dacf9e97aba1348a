"""Cross-run report: the paper's Tables 2-4 and Figs. 1-5 for finished MLflow runs, beside the published ones.

``python -m gated_lpi_exp.report [--runs ID ... | --sweep TAG] [--out DIR] [--log-artifact]`` writes
``report.html`` (self-contained) and ``report.md`` (with the figures as PNG files beside it).

Modules: :mod:`.runs` (select, download, validate, group into columns), :mod:`.tables` (Tables 2-4),
:mod:`.paper` (published values), :mod:`.figures`, :mod:`.render` (HTML / Markdown), :mod:`.build` and
:mod:`.cli`.
"""

from gated_lpi_exp.report.build import ReportFiles, build_report
from gated_lpi_exp.report.cli import main

__all__ = ["ReportFiles", "build_report", "main"]
