"""Lagged pairs: two chosen checkpoints compared directly (``dynamics.lagged_pairs``), by every registered
metric with input ``lagged_pair`` (J_lag, the top sets' Jaccard overlap).

The consecutive-checkpoint curve J_t says how much of the top set survives one step of the grid; a lagged
pair (the paper compares 100K with 300K) says how much survives a longer stretch. Each configured step is
matched to the nearest analysed checkpoint (ties to the earlier one), and the table keeps both. Beside each
value: the metric's random baseline (``MetricSpec.baseline``; J_lag: the expected overlap of top sets of the
same size drawn at random), NaN for a metric without one.

MLflow metrics: ``<metric>.<unit>.<a>_<b>`` with the configured steps, e.g. ``j_lag.ffn.100000_300000``, and
``<metric>.<unit>.<a>_<b>.random`` for the baseline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.metrics import metrics_for, top_count
from gated_lpi_exp.schemas import DataFrame, LaggedOverlap

log = logging.getLogger(__name__)

UNIT_KINDS = {"ffn": "ffn", "attn": "attn"}
"""Unit -> neuron score kind of :class:`CheckpointAggregate`."""
_COLUMNS = list(LaggedOverlap.to_schema().columns)


def nearest_step(steps: Sequence[int], wanted: int) -> int:
    """The analysed step closest to ``wanted`` (the earlier one on a tie)."""
    return min(steps, key=lambda s: (abs(s - wanted), s))


def lagged_overlaps(
    aggregates: Sequence[CheckpointAggregate], pairs: Sequence[Sequence[int]], top_frac: float
) -> DataFrame[LaggedOverlap]:
    """Every ``lagged_pair`` metric on every configured pair of steps, FFN and ATTN neurons.

    Args:
        aggregates: One per analysed checkpoint, any order.
        pairs: ``[a, b]`` training steps; a pair whose two steps match the same checkpoint is skipped
            (with a warning).
        top_frac: Share of neurons in a top set, as for J_stab.

    Returns:
        One row per (metric, pair, unit), with the metric's random baseline (NaN when it has none).
    """
    by_step = {a.step: a for a in aggregates}
    steps = sorted(by_step)
    rows = []
    for requested_a, requested_b in pairs:
        a, b = nearest_step(steps, requested_a), nearest_step(steps, requested_b)
        if a == b:
            log.warning(
                "dynamics.lagged_pairs [%d, %d]: both steps match checkpoint %d; skipped (analysed: %s)",
                requested_a, requested_b, a, steps,
            )  # fmt: skip
            continue
        for unit, kind in UNIT_KINDS.items():
            first, second = by_step[a].scores(kind), by_step[b].scores(kind)  # [L, N] each
            population = int(first.size)
            for spec in metrics_for("lagged_pair"):
                baseline = math.nan if spec.baseline is None else spec.baseline(first, second, top_frac)
                rows.append(
                    dict(
                        metric=spec.name, unit=unit, requested_a=int(requested_a), requested_b=int(requested_b),
                        step_a=a, step_b=b, value=float(spec.fn(first, second, top_frac)),
                        set_size=top_count(population, top_frac), population=population,
                        random_baseline=float(baseline),
                    )
                )  # fmt: skip
    return LaggedOverlap.check(pd.DataFrame(rows, columns=_COLUMNS))


def lagged_metric_name(metric: str, unit: str, requested_a: int, requested_b: int) -> str:
    """``j_lag.ffn.100000_300000``."""
    return f"{metric}.{unit}.{requested_a}_{requested_b}"


def lagged_metrics(table: DataFrame[LaggedOverlap]) -> dict[str, float]:
    """The lagged values as MLflow metrics named by :func:`lagged_metric_name`, their baselines ``.random``
    (NaN baselines included; ``Tracker.log_metrics`` skips them)."""
    out = {}
    for r in table.itertuples(index=False):
        name = lagged_metric_name(r.metric, r.unit, r.requested_a, r.requested_b)
        out[name], out[f"{name}.random"] = float(r.value), float(r.random_baseline)
    return out
