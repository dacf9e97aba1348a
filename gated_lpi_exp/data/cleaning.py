"""Clean relation text and samples, recording every change so a run can log what it evaluated.

The upstream files contain literal escape sequences (``Bras\\u00edlia`` as six characters), stray whitespace,
exact duplicate pairs and subjects repeated with different objects; each fix, and each repeated subject
(whether it is kept or dropped), is one record of the cleaning report (``file, relation, subject, kind,
detail``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from gated_lpi_exp.data.characters import has_visible, strip_invisible
from gated_lpi_exp.data.reader import RawRelation
from gated_lpi_exp.errors import ConfigurationError, DataError

CHANGE_KINDS: tuple[str, ...] = (
    "escape",
    "invisible",
    "unicode",
    "whitespace",
    "empty",
    "duplicate",
    "conflict",
    "multi_token",
)
"""Kinds of cleaning record: four text fixes; ``empty`` (a sample dropped); ``duplicate`` (a pair repeated
exactly) and ``conflict`` (a subject repeated with another object), whose ``detail`` says whether the sample
was kept or dropped; then ``multi_token`` (per relation: objects the series' tokenizer splits, noted when the
run loads it, :mod:`gated_lpi_exp.data.objects`)."""

DUPLICATE_POLICIES: tuple[str, ...] = ("keep", "drop")
"""``keep`` (the default, as the paper evaluates all 906 upstream samples): keep every non-empty sample;
``drop``: keep only the first sample of each subject."""

# JSON-style escapes only: a backslash followed by anything else is left alone, as it may be meant literally.
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[nrt\"'\\/])")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'", "\\": "\\", "/": "/"}
_SURROGATE_RE = re.compile("[\ud800-\udfff]")

Note = Callable[[str, str, str], None]


@dataclass
class CleanRelation:
    """A relation after cleaning: what the loader turns into rows."""

    template: str
    samples: list[tuple[str, str]]
    changes: list[dict[str, str]] = field(default_factory=list)


def clean_text(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Decode literal escapes, remove characters that print nothing (:mod:`gated_lpi_exp.data.characters`),
    normalise to NFC, collapse whitespace and strip.

    Returns:
        The cleaned text and one ``(kind, before, after)`` per step that changed it.
    """
    steps = (
        ("escape", _unescape),
        ("invisible", strip_invisible),
        ("unicode", _nfc),
        ("whitespace", _squash),
    )
    edits = []
    for kind, step in steps:
        cleaned = step(text)
        if cleaned != text:
            edits.append((kind, text, cleaned))
            text = cleaned
    return text, edits


def check_duplicates_policy(duplicates: str) -> None:
    """Raise ConfigurationError unless ``duplicates`` is one of :data:`DUPLICATE_POLICIES`."""
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigurationError(
            f"relations.duplicates={duplicates!r} is not valid: use one of {', '.join(DUPLICATE_POLICIES)}"
        )


def clean_relation(raw: RawRelation, duplicates: str = "keep") -> CleanRelation:
    """Clean the template and samples of one relation.

    Repeated subjects are reported under either policy: ``duplicate`` / ``conflict`` records say which
    earlier sample each repeats and whether it was kept.

    Args:
        raw: The relation as read.
        duplicates: ``"keep"`` or ``"drop"`` (see :data:`DUPLICATE_POLICIES`).

    Raises:
        ConfigurationError: ``duplicates`` is not a known policy.
        DataError: The cleaned template no longer has exactly one ``{}``.
    """
    check_duplicates_policy(duplicates)
    result = CleanRelation(template="", samples=[])

    def note(subject: str, kind: str, detail: str) -> None:
        result.changes.append(
            {"file": raw.file, "relation": raw.relation, "subject": subject, "kind": kind, "detail": detail}
        )

    result.template = _clean_template(raw, note)
    kept = []
    for i, (subject_raw, object_raw) in enumerate(raw.samples):
        subject, subject_edits = clean_text(subject_raw)
        obj, object_edits = clean_text(object_raw)
        if not (has_visible(subject) and has_visible(obj)):
            # One record says it all; the text fixes that emptied the field would only repeat it.
            empty = "subject" if not has_visible(subject) else "object"
            note(
                subject,
                "empty",
                f"samples[{i}] dropped: {empty} has no visible character after cleaning "
                f"(subject {subject_raw!r}, object {object_raw!r})",
            )
            continue
        for name, edits in (("subject", subject_edits), ("object", object_edits)):
            for kind, before, after in edits:
                note(subject, kind, f"samples[{i}].{name}: {before!r} -> {after!r}")
        kept.append((i, subject, obj))
    result.samples = _apply_duplicates_policy(kept, duplicates, note)
    return result


def _clean_template(raw: RawRelation, note: Note) -> str:
    template, edits = clean_text(raw.template)
    for kind, before, after in edits:
        note("", kind, f"{raw.template_field}: {before!r} -> {after!r}")
    if template.count("{}") != 1:
        raise DataError(
            f"{raw.path}: field '{raw.template_field}' = {template!r} (after cleaning) must contain exactly "
            "one '{}'"
        )
    return template


def _apply_duplicates_policy(
    kept: list[tuple[int, str, str]], duplicates: str, note: Note
) -> list[tuple[str, str]]:
    # The first occurrence of a subject is the reference, so the result depends on nothing but file order.
    first: dict[str, tuple[int, str]] = {}
    samples = []
    action = "kept" if duplicates == "keep" else "dropped"
    for i, subject, obj in kept:
        if subject not in first:
            first[subject] = (i, obj)
            samples.append((subject, obj))
            continue
        if duplicates == "keep":
            samples.append((subject, obj))
        j, first_obj = first[subject]
        if obj == first_obj:
            note(subject, "duplicate", f"samples[{i}] {action}: same pair as samples[{j}] (object {obj!r})")
        else:
            note(
                subject,
                "conflict",
                f"samples[{i}] {action}: object {obj!r} differs from {first_obj!r} of samples[{j}]",
            )
    return samples


def _unescape(text: str) -> str:
    def decode(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] not in "uUx":
            return _SIMPLE_ESCAPES[code]
        try:
            return chr(int(code[1:], 16))
        except (ValueError, OverflowError):  # beyond U+10FFFF: not an escape, keep the text as written
            return match.group(0)

    decoded = _ESCAPE_RE.sub(decode, text)
    if _SURROGATE_RE.search(decoded):
        # ``\ud83d\ude00`` decodes to two surrogates; joining them gives the real character.
        decoded = decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return decoded


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _squash(text: str) -> str:
    return " ".join(text.split())
