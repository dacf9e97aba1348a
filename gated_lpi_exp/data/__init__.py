"""The relational dataset (Hernandez et al. 2023 layout): load, clean, select and fingerprint relations.

Example:
    >>> from gated_lpi_exp.data import load_relations, select_relations
    >>> df = select_relations(load_relations("bundled"), categories=["factual"])
"""

from gated_lpi_exp.data.catalog import CATEGORIES, RELATIONS, TemplateChoice
from gated_lpi_exp.data.relations import (
    BUNDLED_DIR,
    SOURCES,
    cleaning_report,
    dataset_hash,
    load_relations,
    select_relations,
)

__all__ = [
    "BUNDLED_DIR",
    "CATEGORIES",
    "RELATIONS",
    "SOURCES",
    "TemplateChoice",
    "cleaning_report",
    "dataset_hash",
    "load_relations",
    "select_relations",
]
