"""The report as one self-contained HTML page (figures inline as base64 PNG) and as Markdown + PNG files."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gated_lpi_exp.plots._style import format_step
from gated_lpi_exp.report.figures import RenderedFigure
from gated_lpi_exp.report.findings import FINDINGS_HEADERS, VERDICT_HEADERS, FindingsTable
from gated_lpi_exp.report.paper import PAPER_CITATION, PAPER_MODELS
from gated_lpi_exp.report.runs import Column, RunData
from gated_lpi_exp.report.tables import BEST_MARK, ReportTable
from gated_lpi_exp.tracking.names import COMPAT_PARAM, FAMILY_TAG, N_CHECKPOINTS_PARAM, SCORING_PARAM

RUN_HEADERS = [
    "column",
    "run id",
    "run name",
    "model",
    "family",
    "relations",
    "ablation",
    "checkpoints",
    "finished",
]
PAPER_HEADERS = [f"paper: {m} (published)" for m in PAPER_MODELS]
LEGEND = (
    f"{BEST_MARK} = best of our columns on that row, in the direction the metric registry declares "
    f"(column 'better'). The paper columns are the numbers published in {PAPER_CITATION} for OLMoE-1B-7B and "
    "OLMo-7B, with the paper's step range in brackets: reference only, not results of these runs."
)
FINDINGS_TITLE = "Findings: the MoE against the dense model"
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}td.paper,th.paper{background:#fff6e0}
td.best{font-weight:bold;color:#0a5}td.missing{color:#888;font-style:italic}.note{color:#555;font-size:.85em}
figure{margin:1.2em 0}img{max-width:100%}figcaption{color:#444;font-size:.9em}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.5em .8em}
"""


@dataclass
class Header:
    """Who made the report, when, from where, and why it is split into sections (if it is)."""

    generated: datetime
    version: str
    tracking_uri: str
    experiment: str
    selection: str
    split: str = ""


@dataclass
class ReportPart:
    """One section of the report: runs of one condition, their tables and figures, and what sets the
    section apart from the others (empty when the report has one section)."""

    columns: list[Column]
    tables: list[ReportTable]
    figures: list[RenderedFigure]
    differs: dict[str, str] = field(default_factory=dict)
    findings: FindingsTable | None = None
    """The findings judged on the section's MoE/dense column pairs (None without such a pair)."""

    def title(self, index: int, count: int) -> str:
        """``Section 2 of 3: relations.categories=['factual']; data.hash=...`` ("" for a lone section)."""
        if count < 2:
            return ""
        settings = "; ".join(f"{k}={v}" for k, v in self.differs.items())
        return f"Section {index} of {count}: {settings}"


def _strip_list(text: str | None) -> str:
    return "" if not text else text.strip("[]").replace("'", "").replace('"', "")


def run_summary(label: str, data: RunData) -> list[str]:
    """One line of the runs table (see :data:`RUN_HEADERS`)."""
    params = data.params
    relations = _strip_list(params.get("relations.names")) or _strip_list(params.get("relations.categories"))
    steps: list[int] = []
    for name in ("hit_summary", "layer_profiles", "ablation"):
        if (table := data.tables.get(name)) is not None:
            steps = sorted(set(table["step"].astype(int)))
            break
    ckpts = (
        f"{len(steps)}: {format_step(steps[0])}–{format_step(steps[-1])}"
        if steps
        else params.get(N_CHECKPOINTS_PARAM, "?")
    )
    end = data.run.info.end_time
    finished = f"{datetime.fromtimestamp(end / 1000, timezone.utc):%Y-%m-%d %H:%M} UTC" if end else "?"
    tags = data.tags
    return [label, data.run_id, data.run.info.run_name or "", data.model, tags.get(FAMILY_TAG, "?"),
            relations or "?", data.ablation, ckpts, finished]  # fmt: skip


def _runs_lines(columns: list[Column]) -> list[list[str]]:
    return [run_summary(col.label, run) for col in columns for run in col.runs]


def scoring_notes(columns: list[Column]) -> list[str]:
    """One plain-words line for every run not scored the default way (``attribution.compat``)."""
    notes = []
    for col in columns:
        for run in col.runs:
            mode = run.params.get(COMPAT_PARAM, "none")
            if mode != "none":
                words = run.params.get(SCORING_PARAM, f"compatibility mode {mode}")
                notes.append(
                    f"Column {col.label} (run {run.run_id}) was scored with attribution.compat={mode}: {words}."
                )
    return notes


def _head(header: Header) -> str:
    return (
        f"Generated {header.generated:%Y-%m-%d %H:%M:%S %Z} by gated_lpi_exp {header.version} from "
        f"experiment '{header.experiment}' at {header.tracking_uri}; runs: {header.selection}."
    )


def _html_table(table: ReportTable) -> str:
    n_ours = len(table.columns)
    paper_group = f"<th class=paper colspan={len(PAPER_MODELS)}>published in the paper (not ours)</th>"
    out = ["<table>", f"<tr><th colspan=2></th><th colspan={n_ours}>our runs</th>{paper_group}</tr>"]
    heads = "".join(f"<th>{html.escape(c)}</th>" for c in ["metric", "better", *table.columns])
    out.append(f"<tr>{heads}{''.join(f'<th class=paper>{html.escape(h)}</th>' for h in PAPER_HEADERS)}</tr>")
    for row in table.rows:
        tds = [f"<td>{html.escape(row.label)}</td>", f"<td>{row.direction}</td>"]
        for cell in row.cells:
            cls = "num best" if cell.best else ("num missing" if cell.value is None else "num")
            tds.append(f"<td class='{cls}'>{html.escape(row.text(cell))}</td>")
        tds += [f"<td class='num paper'>{html.escape(p)}</td>" for p in row.paper]
        out.append(f"<tr>{''.join(tds)}</tr>")
    out.append("</table>")
    out += [f"<p class=note>{html.escape(n)}</p>" for n in table.notes]
    return "\n".join(out)


def _html_plain_table(headers: list[str], lines: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in line) + "</tr>" for line in lines
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_part(part: ReportPart, title: str) -> list[str]:
    level = 3 if title else 2
    parts = [f"<h2>{html.escape(title)}</h2>"] if title else []
    parts += [f"<h{level}>Runs</h{level}>", _html_plain_table(RUN_HEADERS, _runs_lines(part.columns))]
    parts += [f"<p class=note><b>{html.escape(note)}</b></p>" for note in scoring_notes(part.columns)]
    for table in part.tables:
        parts += [f"<h{level}>{html.escape(table.title)}</h{level}>", _html_table(table)]
    if part.findings is not None:
        parts += [
            f"<h{level}>{FINDINGS_TITLE}</h{level}>",
            _html_plain_table(VERDICT_HEADERS, part.findings.verdicts),
            _html_plain_table(FINDINGS_HEADERS, part.findings.lines),
        ]
        parts += [f"<p class=note>{html.escape(note)}</p>" for note in part.findings.notes]
    parts.append(f"<h{level}>Figures</h{level}>")
    for fig in part.figures:
        parts.append(f"<figure id='{fig.spec.stem}'>")
        if fig.png is not None:
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(f"<img alt='{html.escape(fig.spec.caption)}' src='data:image/png;base64,{data}'>")
        caption = " ".join(filter(None, [fig.spec.caption, fig.note]))
        parts.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return parts


def render_html(header: Header, parts: list[ReportPart]) -> str:
    """The whole report as one HTML document with no external resources."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Gated-LPI report</title>",
        f"<style>{_CSS}</style></head><body><h1>Gated-LPI report</h1>",
        f"<p>{html.escape(_head(header))}</p>",
    ]
    if header.split:
        out.append(f"<p class=warn>{html.escape(header.split)}</p>")
    out.append(f"<p class=note>{html.escape(LEGEND)}</p>")
    for index, part in enumerate(parts, 1):
        out += _html_part(part, part.title(index, len(parts)))
    out.append("</body></html>")
    return "\n".join(out)


_MD_SPECIAL = set("\\`*_[]|~")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def md_escape(text: str) -> str:
    """``text`` as literal Markdown: HTML special characters as entities, Markdown punctuation
    backslash-escaped, line breaks as spaces, so a relation, subject or run name cannot add markup, links,
    images or HTML (``<script>``) to ``report.md``."""
    out = []
    for char in " ".join(str(text).splitlines()):
        if char in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[char])
        elif char in _MD_SPECIAL:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _md_table(headers: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(md_escape(str(v)) for v in line) + " |" for line in lines]


def _md_part(part: ReportPart, title: str, out_dir: Path, prefix: str) -> list[str]:
    hashes = "###" if title else "##"
    parts = [f"## {md_escape(title)}", ""] if title else []
    parts += [f"{hashes} Runs", "", *_md_table(RUN_HEADERS, _runs_lines(part.columns)), ""]
    parts += [line for note in scoring_notes(part.columns) for line in (f"**{md_escape(note)}**", "")]
    for table in part.tables:
        lines = [[r.label, r.direction, *(r.text(c) for c in r.cells), *r.paper] for r in table.rows]
        parts += [f"{hashes} {md_escape(table.title)}", ""]
        parts += _md_table(["metric", "better", *table.columns, *PAPER_HEADERS], lines) + [""]
        parts += [line for note in table.notes for line in (f"*{md_escape(note)}*", "")]
    if part.findings is not None:
        parts += [f"{hashes} {FINDINGS_TITLE}", "", *_md_table(VERDICT_HEADERS, part.findings.verdicts), ""]
        parts += _md_table(FINDINGS_HEADERS, part.findings.lines) + [""]
        parts += [line for note in part.findings.notes for line in (f"*{md_escape(note)}*", "")]
    parts += [f"{hashes} Figures", ""]
    for fig in part.figures:
        if fig.png is not None:
            (out_dir / f"{prefix}{fig.spec.stem}.png").write_bytes(fig.png)
            parts += [f"![{md_escape(fig.spec.caption)}]({prefix}{fig.spec.stem}.png)", ""]
        parts += [md_escape(" ".join(filter(None, [fig.spec.caption, fig.note]))), ""]
    return parts


def render_markdown(header: Header, parts: list[ReportPart], out_dir: Path) -> str:
    """The report as Markdown (every value from data or names escaped, :func:`md_escape`); writes each figure
    as ``<stem>.png`` (``s<N>_<stem>.png`` in section N of a split report) in ``out_dir`` and links it."""
    out = ["# Gated-LPI report", "", md_escape(_head(header)), ""]
    if header.split:
        out += [f"**{md_escape(header.split)}**", ""]
    out += [md_escape(LEGEND), ""]
    for index, part in enumerate(parts, 1):
        prefix = f"s{index}_" if len(parts) > 1 else ""
        out += _md_part(part, part.title(index, len(parts)), out_dir, prefix)
    return "\n".join(out)
