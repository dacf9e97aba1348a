"""Lagged overlaps: the top neuron sets of two chosen checkpoints compared directly (``dynamics.lagged_pairs``).

The consecutive-checkpoint curve J_t says how much of the top set survives one step of the grid; a lagged
pair (the paper compares 100K with 300K) says how much survives a longer stretch. Each configured step is
matched to the nearest analysed checkpoint (ties to the earlier one), and the table keeps both.

MLflow metrics: ``j_lag.<unit>.<a>_<b>`` with the configured steps, e.g. ``j_lag.ffn.100000_300000``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pandas as pd

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.metrics import top_count, top_set_overlap
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
    """Top-set Jaccard overlap of every configured pair of steps, FFN and ATTN neurons.

    Args:
        aggregates: One per analysed checkpoint, any order.
        pairs: ``[a, b]`` training steps; a pair whose two steps match the same checkpoint is skipped
            (with a warning).
        top_frac: Share of neurons in a top set, as for J_stab.

    Returns:
        One row per (pair, unit). ``random_baseline`` is the overlap two random sets of ``set_size``
        neurons would have: left empty (NaN) until the random-set baselines of the set metrics exist.
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
            rows.append(
                dict(
                    unit=unit, requested_a=int(requested_a), requested_b=int(requested_b), step_a=a, step_b=b,
                    value=top_set_overlap(first, second, top_frac), set_size=top_count(population, top_frac),
                    population=population, random_baseline=math.nan,
                )
            )  # fmt: skip
    return LaggedOverlap.check(pd.DataFrame(rows, columns=_COLUMNS))


def lagged_metric_name(unit: str, requested_a: int, requested_b: int) -> str:
    """``j_lag.ffn.100000_300000``."""
    return f"j_lag.{unit}.{requested_a}_{requested_b}"


def lagged_metrics(table: DataFrame[LaggedOverlap]) -> dict[str, float]:
    """The lagged overlaps as MLflow metrics named by :func:`lagged_metric_name`."""
    return {
        lagged_metric_name(r.unit, r.requested_a, r.requested_b): float(r.value)
        for r in table.itertuples(index=False)
    }
