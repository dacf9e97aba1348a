"""The facts a suite's corpus states: cleaned samples and every phrasing (template) of each relation.

Samples come from :func:`gated_lpi_exp.data.load_relations` with the evaluation template ``zs:0``, so the
facts trained on are exactly the examples evaluated; the other phrasings are read with the data package's
own reader and cleaning, one template at a time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gated_lpi_exp.data import BUNDLED_DIR, TemplateChoice, load_relations
from gated_lpi_exp.data.cleaning import clean_relation
from gated_lpi_exp.data.reader import find_relation_files, read_relation_file

EVAL_TEMPLATE = "zs:0"
"""The template the project evaluates with (the paper's first zero-shot template)."""


@dataclass(frozen=True)
class FactSet:
    """Facts and phrasings of one relation source."""

    facts: pd.DataFrame
    """One row per fact (``load_relations(source, template="zs:0")``): relation, category, subject, object,
    template, template_id, prompt, sample_id."""
    templates: dict[str, list[tuple[str, str]]]
    """Relation -> distinct ``(template_id, template)`` pairs, ``zs:*`` then ``std:*`` (the first is
    ``zs:0``)."""

    def training_templates(
        self, holdout_eval_template: bool, drop_eval_extensions: bool = True
    ) -> dict[str, list[str]]:
        """Relation -> the phrasings the corpus uses.

        Args:
            holdout_eval_template: Leave out the text of ``zs:0``.
            drop_eval_extensions: Leave out phrasings that start with ``zs:0``'s text followed by more words.

        Raises:
            ConfigurationError: holding out ``zs:0`` leaves a relation without any phrasing.
        """
        from gated_lpi_exp.errors import ConfigurationError

        out = {}
        for relation, pairs in self.templates.items():
            eval_text = pairs[0][1]
            kept = [
                t
                for _, t in pairs
                if not (holdout_eval_template and t == eval_text)
                and not (drop_eval_extensions and t.startswith(eval_text + " "))
            ]
            if not kept:
                raise ConfigurationError(
                    f"holdout_eval_template/drop_eval_extensions leave relation {relation!r} without a "
                    "training phrasing; set suite.holdout_eval_template=false."
                )
            out[relation] = kept
        return out


def load_facts(source: str = "bundled") -> FactSet:
    """Read the facts and every phrasing of each relation of ``source``."""
    facts = load_relations(source, template=EVAL_TEMPLATE).reset_index(drop=True)
    return FactSet(facts=facts, templates=_all_templates(source))


def relations_fingerprint(source: str = "bundled") -> str:
    """Short content hash of the facts and phrasings behind ``source``."""
    fs = load_facts(source)
    rows = fs.facts[["relation", "category", "subject", "object"]].astype(str).values.tolist()
    payload = json.dumps({"facts": rows, "templates": fs.templates}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _all_templates(source: str) -> dict[str, list[tuple[str, str]]]:
    root, files = _relation_files(source)
    out: dict[str, list[tuple[str, str]]] = {}
    for path in files:
        counts = _template_counts(path)
        pairs: list[tuple[str, str]] = []
        for kind in ("zs", "std"):
            for index in range(counts[kind]):
                raw = read_relation_file(path, root, TemplateChoice(kind=kind, index=index))
                template = clean_relation(raw).template
                if template not in {t for _, t in pairs}:
                    pairs.append((f"{kind}:{index}", template))
        out[raw.relation] = pairs
    return out


def _relation_files(source: str) -> tuple[Path, list[Path]]:
    if source == "bundled":
        return find_relation_files(BUNDLED_DIR)
    if source == "lre":
        from gated_lpi_exp.data.lre import fetch_lre

        return fetch_lre(None, None)
    return find_relation_files(Path(source).expanduser())


def _template_counts(path: Path) -> dict[str, int]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {
        kind: len(doc.get(field) or [])
        for kind, field in (("zs", "prompt_templates_zs"), ("std", "prompt_templates"))
    }
