"""The paper's relations, their categories, and how a prompt template is chosen from a relation file."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gated_lpi_exp.errors import ConfigurationError

CATEGORIES: tuple[str, ...] = ("linguistic", "commonsense", "factual", "bias")
"""The four relation categories of Hernandez et al. (2023), in the paper's order."""

RELATIONS: dict[str, str] = {
    "adjective_antonym": "linguistic",
    "word_first_letter": "linguistic",
    "word_last_letter": "linguistic",
    "object_superclass": "commonsense",
    "fruit_inside_color": "commonsense",
    "work_location": "commonsense",
    "country_language": "factual",
    "country_capital_city": "factual",
    "name_religion": "bias",
    "occupation_age": "bias",
    "occupation_gender": "bias",
    "name_birthplace": "bias",
}
"""The paper's 12 relations (normalised names) mapped to their category."""

_TEMPLATE_FIELDS = {"zs": "prompt_templates_zs", "std": "prompt_templates"}
_TEMPLATE_RE = re.compile(r"^(zs|std):(\d+)$")


@dataclass(frozen=True)
class TemplateChoice:
    """Which prompt template of every relation file to use, e.g. ``zs:0`` (the paper's choice)."""

    kind: str
    """``"zs"`` for ``prompt_templates_zs`` or ``"std"`` for ``prompt_templates``."""
    index: int
    """Position inside that list (0-based)."""

    @property
    def field(self) -> str:
        """The JSON field holding the template list."""
        return _TEMPLATE_FIELDS[self.kind]

    @property
    def id(self) -> str:
        """The canonical spelling, logged as ``template_id``."""
        return f"{self.kind}:{self.index}"

    @classmethod
    def parse(cls, spec: str) -> TemplateChoice:
        """Parse ``"zs:N"`` or ``"std:N"``.

        Raises:
            ConfigurationError: ``spec`` has another form.
        """
        match = _TEMPLATE_RE.match(str(spec).strip())
        if match is None:
            raise ConfigurationError(
                f"relations.template={spec!r} is not valid: use 'zs:N' (Nth entry of prompt_templates_zs; "
                "'zs:0' is the paper's choice) or 'std:N' (Nth entry of prompt_templates)"
            )
        return cls(kind=match.group(1), index=int(match.group(2)))


def relation_name(name: str) -> str:
    """Normalise a file's ``name`` field: ``"country capital city"`` -> ``"country_capital_city"``."""
    return "_".join(name.lower().split())
