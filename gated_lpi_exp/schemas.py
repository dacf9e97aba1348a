"""pandera schemas of every table the project reads, computes or writes.

Each stage validates what it returns (read -> check -> compute -> check -> write). Signatures use the
``DataFrame[Schema]`` aliases so the shape of a table is visible where it is passed around.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import DataFrame, Series

METRIC_NAME = r"^[a-z][a-z0-9_]*$"
"""What a registered metric's name looks like (the registry in ``gated_lpi_exp.metrics`` holds the names)."""


class Schema(pa.DataFrameModel):
    """Base: strict columns, values coerced to the declared types.

    ``Optional`` columns (intervals, baselines) are always written; they are optional so that tables logged
    before they existed still load in a report.
    """

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


class ExampleHits(Schema):
    """Per checkpoint and example: the gold token's rank among the model's next-token logits (1 = top)."""

    step: Series[int] = pa.Field(ge=0)
    relation: Series[str]
    category: Series[str]
    sample_id: Series[int] = pa.Field(ge=0)
    target_id: Series[int] = pa.Field(ge=0)
    gold_rank: Series[int] = pa.Field(ge=1)


class HitSummary(Schema):
    """HIT@k per checkpoint, overall (group ``all``), per category and per relation (long format)."""

    step: Series[int] = pa.Field(ge=0)
    scope: Series[str] = pa.Field(isin=["overall", "category", "relation"])
    group: Series[str]
    k: Series[int] = pa.Field(ge=1)
    hit: Series[float] = pa.Field(ge=0.0, le=1.0)
    n: Series[int] = pa.Field(ge=1)
    # Bootstrap interval over examples; NaN: not computed.
    ci_low: Series[float] | None = pa.Field(nullable=True)
    ci_high: Series[float] | None = pa.Field(nullable=True)


class CheckpointTable(Schema):
    """The checkpoints a run walked."""

    step: Series[int] = pa.Field(ge=0)
    tokens: Series[float] = pa.Field(nullable=True)
    source: Series[str]
    revision: Series[str] = pa.Field(nullable=True)
    commit: Series[str] = pa.Field(nullable=True)
    """The commit a hub branch pointed at when the run listed it (null for local checkpoints)."""


class TopUnits(Schema):
    """The highest-|I| units of one checkpoint (neurons of each kind, and heads)."""

    step: Series[int] = pa.Field(ge=0)
    kind: Series[str] = pa.Field(isin=["ffn", "attn", "heads"])
    rank: Series[int] = pa.Field(ge=1)
    layer: Series[int] = pa.Field(ge=0)
    expert: Series[int] = pa.Field(ge=-1)  # -1 where not an expert neuron
    head: Series[int] = pa.Field(ge=-1)  # -1 where not an attention unit
    neuron: Series[int] = pa.Field(ge=-1)  # index inside the expert / FFN / head; -1 for a whole head
    score: Series[float]


class LayerProfile(Schema):
    """Mean layer importance per checkpoint (Figs. 2-4), overall (relation ``all``) and per relation."""

    step: Series[int] = pa.Field(ge=0)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    relation: Series[str]
    layer: Series[int] = pa.Field(ge=0)
    importance: Series[float]


class DynamicsCurve(Schema):
    """A per-step dynamics metric (a registered metric with input ``pair``), at the later step of each pair."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    step: Series[int] = pa.Field(ge=0)
    value: Series[float] = pa.Field(nullable=True)
    # Bootstrap interval over examples; NaN: not computed.
    ci_low: Series[float] | None = pa.Field(nullable=True)
    ci_high: Series[float] | None = pa.Field(nullable=True)
    # Expected value for random sets of the same size.
    baseline: Series[float] | None = pa.Field(nullable=True)


class DynamicsSummary(Schema):
    """Single-value dynamics metrics over the whole range (window ``all``) and named step windows."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    window: Series[str]
    value: Series[float] = pa.Field(nullable=True)
    n_checkpoints: Series[int] = pa.Field(ge=0)
    # Bootstrap interval over examples; NaN: not computed.
    ci_low: Series[float] | None = pa.Field(nullable=True)
    ci_high: Series[float] | None = pa.Field(nullable=True)
    # Closed form for random sets; NaN: not a set metric.
    baseline: Series[float] | None = pa.Field(nullable=True)
    baseline_empirical: Series[float] | None = pa.Field(nullable=True)  # mean over seeded random sets


class DynamicsReplicates(Schema):
    """Every bootstrap replicate of every dynamics summary value (for combining runs replicate-wise)."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    window: Series[str]
    replicate: Series[int] = pa.Field(ge=0)
    value: Series[float] = pa.Field(nullable=True)


class DynamicsLayerCurve(Schema):
    """A per-layer dynamics metric at the later step of each consecutive pair, one row per layer."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    layer: Series[int] = pa.Field(ge=0)
    step: Series[int] = pa.Field(ge=0)
    value: Series[float] = pa.Field(nullable=True)
    ci_low: Series[float] | None = pa.Field(nullable=True)
    ci_high: Series[float] | None = pa.Field(nullable=True)
    baseline: Series[float] | None = pa.Field(nullable=True)


class DynamicsLayerSummary(Schema):
    """A per-layer dynamics metric over the whole range (window ``all``) and named step windows."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    layer: Series[int] = pa.Field(ge=0)
    window: Series[str]
    value: Series[float] = pa.Field(nullable=True)
    n_checkpoints: Series[int] = pa.Field(ge=0)
    ci_low: Series[float] | None = pa.Field(nullable=True)
    ci_high: Series[float] | None = pa.Field(nullable=True)
    baseline: Series[float] | None = pa.Field(nullable=True)
    baseline_empirical: Series[float] | None = pa.Field(nullable=True)


class LaggedOverlap(Schema):
    """A metric with input ``lagged_pair`` (J_lag: the top sets' Jaccard overlap) between two chosen
    checkpoints (``dynamics.lagged_pairs``), with what units drawn at random would give."""

    metric: Series[str] = pa.Field(str_matches=METRIC_NAME)
    unit: Series[str] = pa.Field(isin=["ffn", "attn"])
    requested_a: Series[int] = pa.Field(ge=0)  # the steps as configured ...
    requested_b: Series[int] = pa.Field(ge=0)
    step_a: Series[int] = pa.Field(ge=0)  # ... and the analysed checkpoints nearest to them
    step_b: Series[int] = pa.Field(ge=0)
    value: Series[float] = pa.Field(nullable=True)
    set_size: Series[int] = pa.Field(ge=1)  # neurons in each top set
    population: Series[int] = pa.Field(ge=1)  # neurons of the unit type
    random_baseline: Series[float] = pa.Field(nullable=True)  # the metric's baseline; NaN: it has none


class AblationResult(Schema):
    """HIT@10 under an intervention per checkpoint: the targeted units, and random controls by seed."""

    step: Series[int] = pa.Field(ge=0)
    ablation: Series[str]
    condition: Series[str] = pa.Field(isin=["base", "targeted", "random"])
    seed: Series[int] = pa.Field(ge=-1)  # -1 for base and targeted
    n_units: Series[int] = pa.Field(ge=0)
    hit_at_10: Series[float] = pa.Field(ge=0.0, le=1.0)
    drop_percent: Series[float] = pa.Field(nullable=True)
    # Bootstrap interval over examples (NaN: not computed).
    drop_ci_low: Series[float] | None = pa.Field(nullable=True)
    drop_ci_high: Series[float] | None = pa.Field(nullable=True)
    heldout: Series[bool]


class AblationExamples(Schema):
    """Per checkpoint, condition and evaluated example: whether the gold token stayed in the top 10."""

    step: Series[int] = pa.Field(ge=0)
    ablation: Series[str]
    condition: Series[str] = pa.Field(isin=["base", "targeted", "random"])
    seed: Series[int] = pa.Field(ge=-1)
    relation: Series[str]
    sample_id: Series[int] = pa.Field(ge=0)
    hit_at_10: Series[int] = pa.Field(isin=[0, 1])


class CleaningChanges(Schema):
    """One row per change the relation loader made to the data (text fixed, sample dropped)."""

    file: Series[str]
    relation: Series[str]
    subject: Series[str]  # "" for a change to the relation's template
    kind: Series[str] = pa.Field(
        isin=["escape", "invisible", "unicode", "whitespace", "empty", "duplicate", "conflict", "multi_token"]
    )
    detail: Series[str]


class HeadScores(Schema):
    """Mean importance of every attention head per checkpoint, overall (relation ``all``) and per relation."""

    step: Series[int] = pa.Field(ge=0)
    relation: Series[str]
    layer: Series[int] = pa.Field(ge=0)
    head: Series[int] = pa.Field(ge=0)
    score: Series[float]
