"""The relational dataset as one validated table: load, clean, select, fingerprint.

``load_relations`` reads a source (the bundled data, the paper's upstream files, or a local directory in the
upstream layout), cleans it, and returns one row per sample with the chosen prompt. Every cleaning change is
kept in ``df.attrs["changes"]`` and exposed as a table by :func:`cleaning_report`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from gated_lpi_exp.data import lre
from gated_lpi_exp.data.catalog import CATEGORIES, TemplateChoice
from gated_lpi_exp.data.cleaning import check_duplicates_policy, clean_relation
from gated_lpi_exp.data.reader import LAYOUT_HINT, find_relation_files, read_relation_file
from gated_lpi_exp.errors import ConfigurationError, DataError
from gated_lpi_exp.schemas import CleaningChanges, DataFrame, RelationSamples

BUNDLED_DIR = Path(__file__).parent / "bundled"
"""Our own 12-relation dataset, in the upstream layout."""

SOURCES: tuple[str, ...] = ("bundled", "lre")
"""Named sources; any other value must be a directory in the upstream layout."""

_COLUMNS = ["relation", "category", "subject", "object", "template", "template_id", "prompt", "sample_id"]
_CHANGE_COLUMNS = ["file", "relation", "subject", "kind", "detail"]
_HASH_COLUMNS = ["relation", "category", "template", "subject", "object", "prompt", "sample_id"]


def load_relations(
    source: str | os.PathLike[str] = "bundled",
    *,
    template: str = "zs:0",
    duplicates: str = "keep",
    cache_dir: str | None = None,
    base_url: str | None = None,
) -> DataFrame[RelationSamples]:
    """Load and clean every relation of a source.

    Args:
        source: ``"bundled"``, ``"lre"`` (the paper's 12 upstream files, downloaded on first use) or a
            directory laid out as ``<dir>/<category>/<file>.json``, optionally under ``<dir>/data/``.
        template: ``"zs:N"`` (Nth of ``prompt_templates_zs``; ``zs:0`` is the paper's) or ``"std:N"``.
        duplicates: ``"keep"`` (every sample, as the paper evaluates them: 906 on the 12 upstream files) or
            ``"drop"`` (only the first sample of each subject: 877 upstream). Under both, every exact
            duplicate pair and every subject repeated with another object is in the cleaning report.
        cache_dir: Download cache for ``source="lre"``.
        base_url: Download URL for ``source="lre"`` (see :func:`gated_lpi_exp.data.lre.fetch_lre`).

    Returns:
        One row per sample; ``sample_id`` is the sample's position in its relation after cleaning, and
        ``attrs["changes"]`` lists every cleaning change (see :func:`cleaning_report`).

    Raises:
        ConfigurationError: An unknown source, template spelling or duplicates policy.
        DataError: A file breaks the expected layout or schema, or the upstream files cannot be fetched.
    """
    choice = TemplateChoice.parse(template)
    check_duplicates_policy(duplicates)  # before any download, not after it
    root, files = _resolve_source(source, cache_dir, base_url)
    rows: list[dict[str, object]] = []
    changes: list[dict[str, str]] = []
    defined_in: dict[str, Path] = {}
    for path in files:
        raw = read_relation_file(path, root, choice)
        if raw.relation in defined_in:
            raise DataError(
                f"{path}: relation '{raw.relation}' is also defined by {defined_in[raw.relation]}"
            )
        defined_in[raw.relation] = path
        cleaned = clean_relation(raw, duplicates)
        if not cleaned.samples:
            raise DataError(f"{path}: relation '{raw.relation}' has no usable samples left after cleaning")
        changes.extend(cleaned.changes)
        rows.extend(
            {
                "relation": raw.relation,
                "category": raw.category,
                "subject": subject,
                "object": obj,
                "template": cleaned.template,
                "template_id": choice.id,
                "prompt": cleaned.template.replace("{}", subject),
                "sample_id": i,
            }
            for i, (subject, obj) in enumerate(cleaned.samples)
        )
    df = RelationSamples.check(pd.DataFrame(rows, columns=_COLUMNS))
    df.attrs.update(changes=changes, source=str(source), template=choice.id)
    return df


def select_relations(
    df: DataFrame[RelationSamples],
    names: Iterable[str] | None = None,
    categories: Iterable[str] | None = None,
) -> DataFrame[RelationSamples]:
    """Keep the rows of the named relations and/or categories (both given: rows matching both).

    ``None`` or an empty list means no filter on that column. ``sample_id`` is left unchanged, and the
    cleaning record keeps only the selected relations' changes.

    Raises:
        ConfigurationError: A relation not in ``df``, a category outside :data:`CATEGORIES`, or an empty
            selection; each message lists what is available.
    """
    available = sorted(df["relation"].unique())
    present = [c for c in CATEGORIES if c in set(df["category"])]
    mask = pd.Series(True, index=df.index)
    wanted_names = _as_list(names)
    if wanted_names:
        unknown = [n for n in wanted_names if n not in available]
        if unknown:
            raise ConfigurationError(
                f"unknown relation(s) {', '.join(unknown)}; available: {', '.join(available)}"
            )
        mask &= df["relation"].isin(wanted_names)
    wanted_categories = _as_list(categories)
    if wanted_categories:
        unknown = [c for c in wanted_categories if c not in CATEGORIES]
        if unknown:
            raise ConfigurationError(
                f"unknown relation categor(ies) {', '.join(unknown)}; available: {', '.join(present)}"
            )
        mask &= df["category"].isin(wanted_categories)
    if not mask.any():
        raise ConfigurationError(
            f"the relation selection is empty (names={wanted_names}, categories={wanted_categories}); "
            f"available relations: {', '.join(available)}; available categories: {', '.join(present)}"
        )
    out = RelationSamples.check(df[mask].reset_index(drop=True))
    kept = set(out["relation"])
    out.attrs = {**df.attrs, "changes": [c for c in df.attrs.get("changes", []) if c["relation"] in kept]}
    return out


def cleaning_report(df: DataFrame[RelationSamples]) -> DataFrame[CleaningChanges]:
    """The cleaning changes behind ``df`` as a table (``file, relation, subject, kind, detail``).

    Raises:
        DataError: ``df`` carries no cleaning record (it did not come from :func:`load_relations`, or an
            operation dropped its ``attrs``).
    """
    if "changes" not in df.attrs:
        raise DataError(
            "this frame carries no cleaning record (attrs['changes']): pass the frame returned by "
            "load_relations or select_relations"
        )
    return CleaningChanges.check(pd.DataFrame(df.attrs["changes"], columns=_CHANGE_COLUMNS))


def dataset_hash(df: pd.DataFrame) -> str:
    """A short sha256 fingerprint of the samples and prompts, independent of row order.

    Every column that reaches a result is covered: a relation moved to another category, another
    template, or samples renumbered (``sample_id`` decides the held-out halves) give another fingerprint.

    Returns:
        The first 16 hex digits of the sha256 of the sorted ``(relation, category, template, subject,
        object, prompt, sample_id)`` rows.
    """
    rows = sorted(df[_HASH_COLUMNS].astype(str).itertuples(index=False, name=None))
    payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def _resolve_source(
    source: str | os.PathLike[str], cache_dir: str | None, base_url: str | None
) -> tuple[Path, list[Path]]:
    if source == "bundled":
        return find_relation_files(BUNDLED_DIR)
    if source == "lre":
        return lre.fetch_lre(cache_dir, base_url)
    path = Path(source).expanduser()
    if not str(source) or not path.is_dir():
        raise ConfigurationError(
            f"relations.source={str(source)!r} is not valid: use 'bundled' (our own data), 'lre' (the "
            "paper's upstream files, downloaded once) or an existing directory laid out as "
            f"{LAYOUT_HINT}"
        )
    return find_relation_files(path)


def _as_list(values: Iterable[str] | str | None) -> list[str]:
    # A bare string is one name, not a sequence of letters.
    if values is None:
        return []
    return [values] if isinstance(values, str) else [str(v) for v in values]
