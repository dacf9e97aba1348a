"""What a person sees in the terminal: log lines and progress bars that never collide, one log format, and
the results table a run ends with (HIT@k first and last, the dynamics, the ablation drops, where to look
next).

Log lines go to stderr (and the job's log file), progress bars to stderr on a terminal only, the results
table to stdout, so ``python -m gated_lpi_exp > results.md`` keeps just the table.
"""

from __future__ import annotations

import logging
import logging.config
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import pandas as pd
from omegaconf import OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from gated_lpi_exp.compose import CONF_DIR
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.metrics import MIN_BASE_HIT10, MetricSpec, metrics_for

LOGGING_CONFIG = CONF_DIR / "hydra" / "job_logging" / "gated_lpi_exp.yaml"
"""The one log format: Hydra's job logging config, also used by the other commands (report, suites)."""
_FOREIGN_LOGGERS = ("mlflow", "alembic")
"""Libraries that install their own handler and format; their records go through ours instead."""


def configure_cli_logging() -> None:
    """Log to stderr in the format of :data:`LOGGING_CONFIG` (commands that Hydra does not start)."""
    cfg = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(LOGGING_CONFIG), resolve=False))
    cfg["handlers"] = {"console": cfg["handlers"]["console"]}
    cfg["root"]["handlers"] = ["console"]
    logging.config.dictConfig(cfg)
    adopt_foreign_loggers()


def adopt_foreign_loggers() -> None:
    """Let MLflow's (and its database migrations') records reach the root logger's handlers, in our format."""
    for name in _FOREIGN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@contextmanager
def console() -> Iterator[None]:
    """Log lines printed above the progress bars (never through them), in one format."""
    adopt_foreign_loggers()
    with logging_redirect_tqdm():
        yield


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, columns padded; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "|" + "|".join(f" {h:<{w}} " for h, w in zip(headers, widths, strict=True)) + "|"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    body = [
        "|"
        + "|".join(
            f" {v:<{w}} " if i == 0 else f" {v:>{w}} " for i, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        + "|"
        for r in rows
    ]
    return [line, rule, *body]


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def hit_rows(hits: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """HIT@k at the first and last checkpoint, with the binomial standard error over examples."""
    overall = hits[hits["scope"] == "overall"]
    first, last = int(overall["step"].min()), int(overall["step"].max())
    rows = []
    for k in sorted(overall["k"].unique()):
        cells = [f"HIT@{k}"]
        for step in (first, last):
            row = overall[(overall["k"] == k) & (overall["step"] == step)].iloc[0]
            p, n = float(row["hit"]), int(row["n"])
            cells.append(f"{_pct(p)} ± {_pct(math.sqrt(p * (1 - p) / n))}")
        rows.append(cells)
    n = int(overall["n"].iloc[0])
    return ["measure (± s.e., n=" + str(n) + ")", f"step {first:,}", f"step {last:,}"], rows


def _shown(spec: MetricSpec, value: float) -> str:
    """A value as the registry's unit says: a fraction in %, anything else as a plain number."""
    if spec.unit == "fraction":
        return _pct(value, spec.display.digits)
    return "n/a" if math.isnan(value) else f"{value * spec.display.scale:.{spec.display.digits}f}"


def dynamics_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Every registered single-value dynamics metric over all checkpoints, FFN and ATTN."""
    whole = summary[summary["window"] == "all"]
    rows = []
    for spec in [*metrics_for("pair", per_layer=False), *metrics_for("profile")]:
        cells = [spec.label]
        for unit in ("ffn", "attn"):
            hit = whole[(whole["metric"] == spec.name) & (whole["unit"] == unit)]
            cells.append(_shown(spec, float(hit["value"].iloc[0]) if len(hit) else float("nan")))
        rows.append(cells)
    return ["dynamics (all checkpoints)", "FFN", "ATTN"], rows


def ablation_rows(ablation: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Mean HIT@10 drop per ablation over the checkpoints whose base HIT@10 is high enough to divide by."""
    rows = []
    for name, part in ablation.groupby("ablation", sort=False):
        base = part[part["condition"] == "base"].set_index("step")["hit_at_10"]  # [S]
        kept = base.index[base >= MIN_BASE_HIT10]
        part = part[part["step"].isin(kept)]
        used = f"{len(kept)} of {len(base)}"
        if not len(kept):
            rows.append([str(name), "n/a", "n/a", f"0 of {len(base)} (base HIT@10 too low)"])
            continue
        targeted = part.loc[part["condition"] == "targeted", "drop_percent"].mean() / 100
        per_seed = part[part["condition"] == "random"].groupby("seed")["drop_percent"].mean() / 100  # [seeds]
        control = _pct(per_seed.mean()) if len(per_seed) else "none run"
        if len(per_seed) > 1:
            control += f" ± {_pct(per_seed.std(ddof=1))}"
        rows.append([str(name), _pct(targeted), control, used])
    headers = ["ablation: HIT@10 drop", "targeted", "random (± sd over seeds)", "checkpoints used"]
    return headers, rows


def results_table(cfg: RunConfig, tables: dict[str, pd.DataFrame]) -> str:
    """The run's results as Markdown tables (lm-evaluation-harness style)."""
    parts: list[str] = []
    sections = [("hit_summary", hit_rows), ("dynamics_summary", dynamics_rows), ("ablation", ablation_rows)]
    for name, make in sections:
        if name in tables and len(tables[name]):
            headers, rows = make(tables[name])
            parts += [*_md(headers, rows), ""]
    if "dynamics_summary" in tables:
        parts.append(
            f"Dynamics: top sets are the top {cfg.dynamics.top_frac * 100:g}% of neurons (dynamics.top_frac); "
            "the metrics are defined in docs/definitions.md."
        )
    if "ablation" in tables:
        parts.append(
            f"Drops: mean over the checkpoints whose base HIT@10 is at least {_pct(MIN_BASE_HIT10, 0)} "
            "(below it a drop divides by almost nothing)."
        )
    return "\n".join(parts).rstrip()


def run_summary(
    cfg: RunConfig, tables: dict[str, pd.DataFrame], run_id: str, url: str, next_command: str
) -> str:
    """What a finished run prints: a title line, the results tables, where the run is, what to run next."""
    from gated_lpi_exp.tracking.describe import relation_label  # the run's modules (torch) are loaded by now

    title = (
        f"## gated_lpi_exp: {cfg.model.name} on {relation_label(cfg)} relations, ablation {cfg.ablation.name}"
    )
    lines = [
        "",
        title,
        "",
        results_table(cfg, tables),
        "",
        f"MLflow run {run_id}: {url}",
        f"Next: {next_command}",
        "",
    ]
    return "\n".join(lines)
