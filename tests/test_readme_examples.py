"""Every ``python -m gated_lpi_exp ...`` example in the README and the docs composes and passes the config's
checks as written (each job of a ``-m`` sweep separately), the way ``--cfg job`` composes it."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from gated_lpi_exp.compose import CONFIG_ROOT, compose_run_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(ROOT.glob("experiments/*/README.md")),
]
_COMMAND = re.compile(r"-m gated_lpi_exp(?=\s|$|`)(.*)")


def _commands(text: str) -> list[str]:
    """The arguments after ``-m gated_lpi_exp`` of every example (fenced lines joined at ``\\``, inline
    code spans), without shell comments and placeholders."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    found = []
    for line in lines:
        for span in re.findall(r"`([^`]+)`", line) or [line]:
            match = _COMMAND.search(span)
            if match and "..." not in match.group(1):
                found.append(match.group(1).split(" #")[0].strip())
    return found


def _jobs(args: str) -> list[list[str]]:
    """One override list per job: Hydra's flags (``-m``, ``--cfg job``, ``--resolve``) dropped, ``key=a,b``
    sweeps expanded (commas inside brackets are values)."""
    choices = []
    tokens = iter(shlex.split(args))
    for token in tokens:
        if token in ("--cfg", "-c"):
            next(tokens, None)  # its argument: job, hydra or all
        if token.startswith("-"):
            continue
        key, _, value = token.partition("=")
        depth, parts, start = 0, [], 0
        for i, char in enumerate(value):
            depth += char in "[{("
            depth -= char in "]})"
            if char == "," and depth == 0:
                parts.append(value[start:i])
                start = i + 1
        parts.append(value[start:])
        choices.append([f"{key}={p}" for p in parts] if value else [token])
    return [list(job) for job in itertools.product(*choices)]


EXAMPLES = sorted(
    {
        (path.relative_to(ROOT).as_posix(), tuple(job))
        for path in DOCS
        for args in _commands(path.read_text())
        for job in _jobs(args)
    }
)


def test_the_docs_hold_examples_including_the_windows_one():
    assert len(EXAMPLES) >= 10
    assert any(any(o.lstrip("+").startswith("dynamics.windows=") for o in job) for _, job in EXAMPLES)


@pytest.mark.parametrize(("doc", "job"), EXAMPLES, ids=[f"{d}:{' '.join(j)}" for d, j in EXAMPLES])
def test_each_documented_example_composes_and_passes_the_checks(doc, job, monkeypatch):
    monkeypatch.setenv("GATED_LPI_EXP_ROOT", str(CONFIG_ROOT))
    cfg = compose_run_config(list(job))
    if cfg.model.kind == "suite" and cfg.ablation.unit == "head":
        # What the run checks against the model's config.json before compute, from the suite's recipe.
        spec = cfg.model.suite.resolved()
        assert cfg.ablation.count < spec.num_layers * spec.num_heads, "masks every head of the suite"
