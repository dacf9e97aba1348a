"""pandera schemas of every table the project reads, computes or writes.

Each stage validates what it returns (read -> check -> compute -> check -> write). Signatures use the
``DataFrame[Schema]`` aliases so the shape of a table is visible where it is passed around.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import DataFrame, Series


class Schema(pa.DataFrameModel):
    """Base: strict columns, values coerced to the declared types."""

    class Config:
        strict = True
        coerce = True

    @classmethod
    def check(cls, data: pd.DataFrame) -> DataFrame:
        """Validate ``data`` lazily (every failure reported at once) and return the coerced frame."""
        return cls.validate(data, lazy=True)


class RelationSamples(Schema):
    """One row per (relation sample, prompt template): the examples a run evaluates."""

    relation: Series[str]
    category: Series[str] = pa.Field(isin=["linguistic", "commonsense", "factual", "bias"])
    subject: Series[str] = pa.Field(str_length={"min_value": 1})
    object: Series[str] = pa.Field(str_length={"min_value": 1})
    template: Series[str] = pa.Field(str_contains="{}")
    template_id: Series[str]
    prompt: Series[str] = pa.Field(str_length={"min_value": 1})
    sample_id: Series[int] = pa.Field(ge=0)


__all__ = ["DataFrame", "RelationSamples", "Schema", "Series"]
