"""Read relation files in the upstream ``evandez/relations`` layout and check their structure.

Only structure is checked here (fields present, right types, one ``{}`` per template); the text itself is
cleaned later by :mod:`gated_lpi_exp.data.cleaning`, so every change to it can be reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated_lpi_exp.data.catalog import CATEGORIES, TemplateChoice, relation_name
from gated_lpi_exp.errors import DataError

LAYOUT_HINT = "<dir>/<category>/<relation>.json (optionally under a top-level data/ folder)"


@dataclass(frozen=True)
class RawRelation:
    """One relation file as read, before cleaning."""

    path: Path
    """Where the file lives (used in error messages)."""
    file: str
    """The file's path relative to the source root (used in the cleaning report)."""
    relation: str
    """Normalised relation name, from the file's ``name`` field."""
    category: str
    """``properties.relation_type``, else the parent folder's name."""
    template: str
    """The chosen prompt template, as written in the file."""
    template_field: str
    """Where the template came from, e.g. ``prompt_templates_zs[0]``."""
    samples: tuple[tuple[str, str], ...]
    """``(subject, object)`` pairs as written in the file, in file order."""


def find_relation_files(directory: Path) -> tuple[Path, list[Path]]:
    """List the relation files of an upstream-layout directory.

    Args:
        directory: The directory itself or its parent holding a ``data/`` folder.

    Returns:
        The root the files are relative to, and the files (category folders in paper order, then by path).

    Raises:
        DataError: No ``<category>/<name>.json`` file is found.
    """
    root = directory / "data" if (directory / "data").is_dir() else directory
    # Category folders in the paper's order, so tables and logs list relations the way the paper does.
    rank = {category: i for i, category in enumerate(CATEGORIES)}
    files = sorted(root.glob("*/*.json"), key=lambda p: (rank.get(p.parent.name, len(rank)), p.as_posix()))
    if not files:
        raise DataError(f"no relation files found under {directory}: expected {LAYOUT_HINT}")
    return root, files


def read_relation_file(path: Path, root: Path, choice: TemplateChoice) -> RawRelation:
    """Parse one relation file and check the fields the loader needs.

    Raises:
        DataError: Naming the file and the field, if the file does not parse, lacks ``name``, ``samples`` or
            the chosen template list, has a sample without ``subject``/``object``, a template without exactly
            one ``{}``, or a template index out of range.
    """
    doc = _parse_json(path)
    name = doc.get("name")
    if not isinstance(name, str) or not relation_name(name):
        raise DataError(f"{path}: field 'name' is missing or not a non-empty string")
    relation = relation_name(name)
    field = choice.field
    templates = _templates(path, doc, field)
    if choice.index >= len(templates):
        raise DataError(
            f"{path}: relation '{relation}' has {len(templates)} entries in '{field}', so template "
            f"'{choice.id}' is out of range (valid: {choice.kind}:0..{choice.kind}:{len(templates) - 1})"
        )
    return RawRelation(
        path=path,
        file=path.relative_to(root).as_posix(),
        relation=relation,
        category=_category(path, doc),
        template=templates[choice.index],
        template_field=f"{field}[{choice.index}]",
        samples=_samples(path, doc),
    )


def _parse_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'name' and 'samples', got {type(doc).__name__}")
    return doc


def _templates(path: Path, doc: dict[str, Any], field: str) -> list[str]:
    templates = doc.get(field)
    if not isinstance(templates, list) or not templates:
        raise DataError(f"{path}: field '{field}' is missing or not a non-empty list of templates")
    for i, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise DataError(
                f"{path}: field '{field}[{i}]' = {template!r} must be a string with exactly one '{{}}' "
                "where the subject goes"
            )
    return templates


def _category(path: Path, doc: dict[str, Any]) -> str:
    properties = doc.get("properties")
    declared = properties.get("relation_type") if isinstance(properties, dict) else None
    category, where = (declared, "properties.relation_type") if declared else (path.parent.name, "folder")
    if category not in CATEGORIES:
        raise DataError(f"{path}: category {category!r} (from {where}) is not one of {', '.join(CATEGORIES)}")
    return category


def _samples(path: Path, doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    samples = doc.get("samples")
    if not isinstance(samples, list) or not samples:
        raise DataError(f"{path}: field 'samples' is missing or not a non-empty list")
    pairs = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise DataError(f"{path}: field 'samples[{i}]' must be an object with 'subject' and 'object'")
        for key in ("subject", "object"):
            if not isinstance(sample.get(key), str):
                raise DataError(f"{path}: field 'samples[{i}].{key}' is missing or not a string")
        pairs.append((sample["subject"], sample["object"]))
    return tuple(pairs)
