"""Metric registry (lm-evaluation-harness style): each metric's direction, aggregation, paper ref and version.

Tables and plots read ``higher_is_better`` and ``aggregation`` from here instead of special-casing names, and
each spec's ``version`` is logged with results so a changed definition never mixes with old numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from gated_lpi_exp.metrics.layers import cross_step_cv, layer_consistency
from gated_lpi_exp.metrics.neurons import jaccard_stability, positive_gain_concentration, top_set_overlap
from gated_lpi_exp.metrics.prediction import drop_percent, hit_at_k


def _nanmean(values: Any) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _last(values: Any) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not v.size:
        raise ValueError("aggregation 'last' needs at least one value")
    return float(v[-1])


def _single(values: Any) -> float:
    v = np.asarray(values, dtype=np.float64)
    if v.size != 1:
        raise ValueError(f"aggregation 'none' expects one value, got shape {v.shape}")
    return float(v.reshape(()))


AGGREGATIONS: dict[str, Callable[[Any], float]] = {
    "mean": lambda values: float(np.mean(np.asarray(values, dtype=np.float64))),
    "nanmean": _nanmean,
    "last": _last,
    "none": _single,
}
"""How a metric's per-item values (per step, per example, ...) reduce to one reported number."""


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric."""

    name: str
    """Key in ``METRICS`` and the name logged to MLflow."""
    fn: Callable[..., Any]
    """The function computing it (see its docstring for inputs and outputs)."""
    higher_is_better: bool
    """Direction used by tables and plots."""
    aggregation: str
    """Key of ``AGGREGATIONS`` reducing the per-item values to the reported number."""
    description: str
    """One line for tables, plots and the MLflow run."""
    paper_ref: str
    """Where the metric is defined (e.g. "eq. 7")."""
    version: int = 1
    """Bumped whenever the definition changes; logged with every result."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"metric {self.name!r}: unknown aggregation {self.aggregation!r}; "
                f"known: {sorted(AGGREGATIONS)}"
            )

    def aggregate(self, values: Any) -> float:
        """Reduces per-item values with this metric's aggregation."""
        return AGGREGATIONS[self.aggregation](values)


METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    aggregation: str,
    description: str,
    paper_ref: str,
    version: int = 1,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged.

    Also usable as a plain call on an existing callable: ``register_metric("x", ...)(partial(f, k=1))``.

    Raises:
        ValueError: ``name`` is already registered, or the aggregation is unknown.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = MetricSpec(name, fn, higher_is_better, aggregation, description, paper_ref, version)
        return fn

    return decorator


def get_metric(name: str) -> MetricSpec:
    """The spec registered under ``name``.

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}") from None


def metric_versions() -> dict[str, int]:
    """``{name: version}`` of every registered metric, to log with results."""
    return {name: spec.version for name, spec in METRICS.items()}


register_metric(
    "j_stab",
    higher_is_better=True,
    aggregation="mean",
    paper_ref="eq. 7",
    description="Top-1% set stability: mean Jaccard overlap of consecutive checkpoints' top-|I| sets; "
    "fn returns (mean, curve)",
)(jaccard_stability)
register_metric(
    "j_lag",
    higher_is_better=True,
    aggregation="none",
    paper_ref="Sec. 4.1 text (100K vs 300K)",
    description="Lagged top-1% overlap: Jaccard overlap of the top-|I| sets of two chosen checkpoints "
    "(dynamics.lagged_pairs), e.g. how much of the core at 100K survives to 300K",
)(top_set_overlap)
register_metric(
    "r_t",
    higher_is_better=True,
    aggregation="nanmean",
    paper_ref="eq. 8",
    description="Positive-gain concentration: share of a layer's positive importance gain taken by its "
    "top-1% gainers (higher = more concentrated reinforcement); fn returns the curve over steps",
)(positive_gain_concentration)
register_metric(
    "rho_avg",
    higher_is_better=True,
    aggregation="none",
    paper_ref="eqs. 9-10",
    description="Layer-distribution consistency: mean Pearson correlation of layer profiles over "
    "checkpoint pairs",
)(layer_consistency)
register_metric(
    "sigma_rel",
    higher_is_better=False,
    aggregation="none",
    paper_ref="eq. 11",
    description="Cross-step coefficient of variation: mean over layers of std/|mean| across checkpoints",
)(cross_step_cv)
register_metric(
    "hit_at_1",
    higher_is_better=True,
    aggregation="none",
    paper_ref="eq. 6",
    description="Share of examples whose gold token is the top-1 logit (ties with the target count as hits)",
)(partial(hit_at_k, k=1))
register_metric(
    "hit_at_10",
    higher_is_better=True,
    aggregation="none",
    paper_ref="eq. 6",
    description="Share of examples whose gold token is among the top-10 logits "
    "(ties with the target count as hits)",
)(partial(hit_at_k, k=10))
register_metric(
    "drop_percent",
    higher_is_better=False,
    aggregation="none",
    paper_ref="Table 4 (docs/definitions.md, 'Ablations')",
    description=(
        "100*(HIT@10 base - ablated)/base: lower = knowledge survives losing its top units "
        "(the paper's functional robustness); higher = the ablated units matter more causally"
    ),
)(drop_percent)
