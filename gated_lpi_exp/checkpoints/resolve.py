"""Resolve a checkpoint selection to concrete, existing revisions.

Hub series are listed from the repository's real branches, matched by the series' own branch pattern
(``model.branch_pattern``: ``step{N}-tokens{M}B`` for OLMo/OLMoE, ``step{N}`` for Pythia,
``stage1-step{N}-tokens{M}B`` for OLMo-2, ``ckpt_{NNN}`` for Amber); a branch name is never synthesised. Local
series come from their manifest (or, lacking one, their ``step{N}/`` folders).
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gated_lpi_exp.checkpoints.manifest import (
    MANIFEST_NAME,
    DamagedManifestError,
    present_entries,
    read_manifest,
)
from gated_lpi_exp.config import DEFAULT_BRANCHES
from gated_lpi_exp.errors import CheckpointError

log = logging.getLogger(__name__)

_FOLDER = re.compile(r"^step(\d+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{7,40}$")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series, ready to load."""

    step: int
    """Training step."""
    source: str
    """Hub repository id or local folder to load from."""
    revision: str | None = None
    """Hub branch (None for local checkpoints)."""
    tokens: int | None = None
    """Training tokens seen, when known."""
    commit: str | None = None
    """The commit the hub branch pointed at when the series was listed; files are downloaded from this
    commit, so a branch that moves during a run cannot mix two revisions (None for local checkpoints)."""
    files: tuple[tuple[str, str], ...] | None = None
    """``(file name, sha256)`` of a local checkpoint's files as its manifest recorded them (None: none
    recorded); loading verifies them."""

    @property
    def label(self) -> str:
        return self.revision or Path(self.source).name


@dataclass
class Resolution:
    """The selected checkpoints, and what was asked for but does not exist."""

    checkpoints: list[Checkpoint]
    missing_steps: list[int]
    substitutions: dict[int, int]
    available: list[Checkpoint]


def parse_branches(
    repo_id: str,
    names: Iterable[str] | Mapping[str, str],
    pattern: str = DEFAULT_BRANCHES,
    tokens_per_step: int | None = None,
) -> list[Checkpoint]:
    """Checkpoints from the branch names that match ``pattern``; other names (``main``) are ignored.

    Args:
        repo_id: The hub repository.
        names: Its branch names, or branch name -> the commit it points at.
        pattern: A regular expression with a named group ``step`` and optionally ``tokens`` (billions).
        tokens_per_step: Fills the token count where the branch name carries none.

    Returns:
        One checkpoint per step, sorted by step (a step named twice keeps the last name listed).
    """
    regex = re.compile(pattern)
    commits = names if isinstance(names, Mapping) else {}
    found = {}
    for name in names:
        m = regex.match(name)
        if m:
            step = int(m.group("step"))
            tokens = m.groupdict().get("tokens")
            count = int(tokens) * 10**9 if tokens else (step * tokens_per_step if tokens_per_step else None)
            found[step] = Checkpoint(step, repo_id, name, count, commits.get(name))
    return [found[s] for s in sorted(found)]


def list_local_checkpoints(root: str | Path) -> list[Checkpoint]:
    """Checkpoints of a local series, from its manifest or, lacking one, its ``step{N}/`` folders.

    A step the manifest lists but whose folder is missing is skipped with a warning (as
    ``checkpoints.missing=warn`` skips a requested step that does not exist). A damaged manifest is
    reported and the series is read from its ``step{N}/`` folders instead, without checksums.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(
            f"Local checkpoint folder {root} does not exist; set model.source to a series folder."
        )
    if (root / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(root)
        except DamagedManifestError as exc:
            log.warning("%s; reading the series from its step folders instead (no checksums)", exc)
        else:
            present, missing = present_entries(root, manifest)
            if missing:
                log.warning(
                    "%s lists steps %s whose folders are missing; skipping them",
                    root / MANIFEST_NAME,
                    ", ".join(f"{e.step} ({e.path})" for e in missing),
                )
            entries = sorted(present, key=lambda e: e.step)
            return [
                Checkpoint(step=e.step, source=str(root / e.path), tokens=e.tokens, files=_frozen(e.files))
                for e in entries
            ]
    steps = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _FOLDER.match(p.name)))
    if not steps:
        raise CheckpointError(f"{root} holds neither a {MANIFEST_NAME} nor step{{N}}/ folders.")
    log.warning("%s has no usable %s; using its %d step folders", root, MANIFEST_NAME, len(steps))
    return [Checkpoint(step=s, source=str(root / f"step{s}")) for s in steps]


def _frozen(files: dict[str, str]) -> tuple[tuple[str, str], ...] | None:
    return tuple(sorted(files.items())) if files else None


def select_checkpoints(
    available: list[Checkpoint],
    *,
    select: str = "all",
    steps: Iterable[int] = (),
    start: int | None = None,
    stop: int | None = None,
    every: int | None = None,
    match: str = "exact",
    missing: str = "warn",
    limit: int | None = None,
    revisions: Iterable[str] = (),
) -> Resolution:
    """Pick checkpoints from ``available`` (sorted by step) as a config asks.

    Raises:
        CheckpointError: nothing matches (the message lists what exists), or a step is missing and
            ``missing='fail'``.
    """
    if not available:
        raise CheckpointError("The series holds no checkpoints.")
    by_step = {c.step: c for c in available}
    all_steps = sorted(by_step)
    missing_steps: list[int] = []
    substitutions: dict[int, int] = {}
    if select == "all":
        chosen = all_steps
    elif select == "range":
        lo = all_steps[0] if start is None else start
        hi = all_steps[-1] if stop is None else stop
        chosen = [s for s in all_steps if lo <= s <= hi and (every is None or s % every == 0)]
    elif select == "steps":
        chosen = []
        for step in steps:
            if step in by_step:
                chosen.append(step)
            elif match == "nearest":
                near = _nearest(all_steps, step)
                substitutions[step] = near
                chosen.append(near)
            else:
                missing_steps.append(step)
    elif select == "revisions":
        chosen, unknown = _by_revision(available, revisions)
        if unknown:
            heads = ", ".join(c.label for c in available[:4])
            msg = (
                f"Revisions not in the series: {unknown} (a branch name, a local step folder, or the commit a "
                f"step branch points at, 7 or more hex digits). Available: {heads}, ..."
            )
            if missing == "fail":
                raise CheckpointError(msg + " Set checkpoints.missing=warn to skip them.")
            log.warning(msg + " Skipping them.")
    else:
        raise CheckpointError(f"Unknown checkpoint selection {select!r}; use all, steps, range or revisions.")
    if missing_steps:
        msg = f"Steps not in the series: {missing_steps}. Available: {_describe(all_steps)}."
        if missing == "fail":
            raise CheckpointError(msg + " Set checkpoints.missing=warn to skip them, or match=nearest.")
        log.warning(msg + " Skipping them.")
    for asked, got in substitutions.items():
        if asked != got:
            log.info("step %d is not in the series; using the nearest, step %d", asked, got)
    chosen = sorted(set(chosen))
    if limit is not None and len(chosen) > limit:
        chosen = _spread(chosen, limit)
    if not chosen:
        raise CheckpointError(
            f"No checkpoint matches the selection. Available steps: {_describe(all_steps)}."
        )
    return Resolution([by_step[s] for s in chosen], missing_steps, substitutions, available)


def _by_revision(available: list[Checkpoint], revisions: Iterable[str]) -> tuple[list[int], list[str]]:
    """Steps named by branch, local folder or commit (a unique prefix of 7+ hex digits); and the unknown."""
    chosen, unknown = [], []
    for rev in revisions:
        rev = str(rev).strip()
        hits = [c for c in available if rev in (c.revision, c.label)]
        if not hits and _HEX.match(rev):
            hits = [c for c in available if c.commit and c.commit.startswith(rev.lower())]
        if len(hits) > 1:
            raise CheckpointError(
                f"Revision {rev!r} is ambiguous: it matches {[c.label for c in hits]}. Give more of the commit."
            )
        if hits:
            chosen.append(hits[0].step)
        else:
            unknown.append(rev)
    return chosen, unknown


def _nearest(sorted_steps: list[int], step: int) -> int:
    i = bisect.bisect_left(sorted_steps, step)
    candidates = sorted_steps[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda s: (abs(s - step), s))


def _spread(steps: list[int], n: int) -> list[int]:
    if n == 1:
        return [steps[-1]]
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]


def _describe(steps: list[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(map(str, steps))
    return f"{len(steps)} steps from {steps[0]} to {steps[-1]} ({', '.join(map(str, steps[:5]))}, ...)"
