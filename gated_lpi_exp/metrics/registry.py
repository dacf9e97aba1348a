"""Metric registry (lm-evaluation-harness style): a metric is one function and one :func:`register_metric` call.

A spec says what the pipeline needs to know to compute, name, log and show a metric without special cases:

- ``input``: what the function takes (:data:`INPUTS`); the dynamics stage computes every ``pair`` metric on
  each consecutive pair of checkpoints (a curve), every ``lagged_pair`` metric on each configured pair of
  steps (``dynamics.lagged_pairs``) and every ``profile`` metric on each window's layer profiles, so
  registering one is enough for it to reach the tables, MLflow and the report;
- ``label`` and ``unit``: how tables show it (:data:`DISPLAY`);
- ``higher_is_better``: True / False where "better" has a meaning (HIT@k, drops), None for descriptive
  metrics (the stability measures), which no table ranks;
- ``aggregation``: how per-item values (a curve's steps) reduce to one reported number;
- ``version``: bumped when the definition changes; every run logs ``metrics.<name>.version``
  (:func:`metric_versions`), so a changed definition never mixes with old numbers unnoticed;
- ``baseline``: optionally, what the metric gives for units chosen at random: the arguments of ``fn`` plus
  ``draws`` and ``seed`` keywords; ``draws=0`` returns the closed form (expectation), ``draws > 0`` the
  mean over that many seeded random sets (:mod:`gated_lpi_exp.metrics.baselines`).

The registrations are at the end of this module, in the order tables show them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gated_lpi_exp.metrics.baselines import (
    random_gain_concentration,
    random_gain_concentration_by_layer,
    random_overlap,
    random_pooled_gain_concentration,
)
from gated_lpi_exp.metrics.layers import cross_step_cv, layer_consistency
from gated_lpi_exp.metrics.neurons import (
    gain_concentration,
    gain_concentration_by_layer,
    pooled_gain_concentration,
    top_set_overlap,
)
from gated_lpi_exp.metrics.prediction import drop_percent, hit_rate


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

INPUTS: dict[str, str] = {
    "pair": "fn(scores_a, scores_b, top_frac): the neuron scores [L, N] of two checkpoints (earlier, later) "
    "-> one value, or one per layer [L] (per_layer=True); computed on every consecutive pair: a curve",
    "lagged_pair": "fn(scores_a, scores_b, top_frac): the neuron scores [L, N] of two chosen checkpoints "
    "(dynamics.lagged_pairs) -> one value; computed once per configured pair",
    "profile": "fn(profiles): the mean layer importance [n, L] of a window's n checkpoints -> one value",
    "ranks": "fn(ranks, k): the gold token's rank [B] of every example -> one value",
    "ablation": "fn(base, ablated): a score without and with the ablation -> one value",
}
"""What a metric's function takes, by ``MetricSpec.input``."""


@dataclass(frozen=True)
class Display:
    """How a table shows values of one unit."""

    scale: float
    """Factor from the stored value to the shown one."""
    digits: int
    """Decimals shown."""
    suffix: str
    """Appended to a row label, e.g. `` (%)``."""


DISPLAY: dict[str, Display] = {
    "fraction": Display(scale=100.0, digits=1, suffix=" (%)"),
    "percent": Display(scale=1.0, digits=2, suffix=""),
    "ratio": Display(scale=1.0, digits=2, suffix=""),
}
"""``MetricSpec.unit`` -> display: ``fraction`` (stored in [0, 1], shown in %), ``percent`` (stored in %),
``ratio`` (a dimensionless number such as a correlation, shown as is)."""


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric."""

    name: str
    """Key in ``METRICS``: the ``metric`` value in tables and the stem of its MLflow names."""
    fn: Callable[..., Any]
    """The function computing it, with the signature its ``input`` names (:data:`INPUTS`)."""
    input: str
    """Key of :data:`INPUTS`: what ``fn`` takes and so which stage computes it."""
    label: str
    """Short display name for tables and figures, e.g. ``J_stab``."""
    unit: str
    """Key of :data:`DISPLAY`: what the stored values are and how tables show them."""
    higher_is_better: bool | None
    """Direction, where "better" has a meaning; None for descriptive metrics (never ranked)."""
    aggregation: str
    """Key of ``AGGREGATIONS`` reducing the per-item values (a curve's steps) to the reported number."""
    description: str
    """One line for tables, plots and the MLflow run."""
    paper_ref: str
    """Where the metric is defined (e.g. "eq. 7")."""
    version: int = 1
    """Bumped whenever the definition changes; logged with every result."""
    per_layer: bool = False
    """``fn`` returns one value per layer (``[L]``), kept per layer in the ``dynamics_layer_*`` tables."""
    baseline: Callable[..., Any] | None = None
    """What the metric gives for units chosen at random: ``fn``'s arguments plus keywords ``draws`` (0: closed
    form) and ``seed``; the same shape as ``fn``'s value. None: no baseline."""

    def __post_init__(self) -> None:
        for field, value, known in (
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("input", self.input, INPUTS),
            ("unit", self.unit, DISPLAY),
        ):
            if value not in known:
                raise ValueError(f"metric {self.name!r}: unknown {field} {value!r}; known: {sorted(known)}")
        if self.per_layer and self.input != "pair":
            raise ValueError(f"metric {self.name!r}: per_layer is only defined for input 'pair'")

    def aggregate(self, values: Any) -> float:
        """Reduces per-item values with this metric's aggregation."""
        return AGGREGATIONS[self.aggregation](values)

    @property
    def display(self) -> Display:
        """How tables show this metric's values."""
        return DISPLAY[self.unit]


METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    input: str,
    label: str,
    unit: str,
    higher_is_better: bool | None,
    aggregation: str,
    description: str,
    paper_ref: str,
    version: int = 1,
    per_layer: bool = False,
    baseline: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` under ``name``; returns ``fn`` unchanged.

    Also usable as a plain call on an existing callable: ``register_metric("x", ...)(existing_function)``.
    The arguments are the fields of :class:`MetricSpec`.

    Raises:
        ValueError: ``name`` is already registered, or an input, unit or aggregation is unknown.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = MetricSpec(
            name, fn, input, label, unit, higher_is_better, aggregation, description, paper_ref, version,
            per_layer, baseline,
        )  # fmt: skip
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


def metrics_for(input: str, *, per_layer: bool | None = None) -> list[MetricSpec]:
    """The registered metrics that take ``input``, in registration order.

    Args:
        input: A key of :data:`INPUTS`.
        per_layer: True / False keeps only the per-layer / single-value ones; None keeps both.

    Raises:
        KeyError: Unknown input.
    """
    if input not in INPUTS:
        raise KeyError(f"unknown metric input {input!r}; known: {sorted(INPUTS)}")
    return [
        s for s in METRICS.values() if s.input == input and (per_layer is None or s.per_layer == per_layer)
    ]


def metric_versions() -> dict[str, int]:
    """``{name: version}`` of every registered metric, to log with results."""
    return {name: spec.version for name, spec in METRICS.items()}


register_metric(
    "j_stab",
    input="pair",
    label="J_stab",
    unit="fraction",
    higher_is_better=None,
    aggregation="mean",
    paper_ref="eq. 7",
    description="Top-1% set stability: Jaccard overlap of consecutive checkpoints' top-|I| sets (J_t); "
    "J_stab is its mean",
    baseline=random_overlap,
)(top_set_overlap)
register_metric(
    "j_lag",
    input="lagged_pair",
    label="J_lag",
    unit="fraction",
    higher_is_better=None,
    aggregation="none",
    paper_ref="Sec. 4.1 text (100K vs 300K)",
    description="Lagged top-1% overlap: Jaccard overlap of the top-|I| sets of two chosen checkpoints "
    "(dynamics.lagged_pairs), e.g. how much of the core at 100K is still in it at 300K",
    baseline=random_overlap,
)(top_set_overlap)
register_metric(
    "r_t",
    input="pair",
    label="R_t",
    unit="fraction",
    higher_is_better=None,
    aggregation="nanmean",
    paper_ref="eq. 8",
    description="Positive-gain concentration: share of a layer's positive importance gain taken by its "
    "top-1% gainers, averaged over layers (higher = more concentrated reinforcement)",
    baseline=random_gain_concentration,
)(gain_concentration)
register_metric(
    "r_t_layer",
    input="pair",
    label="R_t per layer",
    unit="fraction",
    higher_is_better=None,
    aggregation="nanmean",
    paper_ref="eq. 8, before the layer average",
    description="Positive-gain concentration of each layer on its own: the share of the layer's positive "
    "importance gain taken by its top-1% gainers (R_t is their mean over layers)",
    per_layer=True,
    baseline=random_gain_concentration_by_layer,
)(gain_concentration_by_layer)
register_metric(
    "r_t_pop",
    input="pair",
    label="R_t pooled",
    unit="fraction",
    higher_is_better=None,
    aggregation="nanmean",
    paper_ref="eq. 8 with one population-wide top set (ours, docs/definitions.md)",
    description="Positive-gain concentration with one top-1% set over every layer's neurons (as large as "
    "J_stab's), instead of eq. 8's per-layer sets",
    baseline=random_pooled_gain_concentration,
)(pooled_gain_concentration)
register_metric(
    "rho_avg",
    input="profile",
    label="ρ_avg",
    unit="ratio",
    higher_is_better=None,
    aggregation="none",
    paper_ref="eqs. 9-10",
    description="Layer-distribution consistency: mean Pearson correlation of layer profiles over "
    "checkpoint pairs",
)(layer_consistency)
register_metric(
    "sigma_rel",
    input="profile",
    label="σ_rel",
    unit="ratio",
    higher_is_better=None,
    aggregation="none",
    paper_ref="eq. 11",
    description="Cross-step coefficient of variation: mean over layers of std/|mean| across checkpoints",
)(cross_step_cv)
register_metric(
    "hit_at_k",
    input="ranks",
    label="HIT@k",
    unit="fraction",
    higher_is_better=True,
    aggregation="none",
    paper_ref="eq. 6",
    description="Share of examples whose gold token is among the top-k logits (ties with the target count "
    "as hits); logged as hit_at_<k>",
)(hit_rate)
register_metric(
    "drop_percent",
    input="ablation",
    label="drop",
    unit="percent",
    higher_is_better=False,
    aggregation="none",
    paper_ref="Table 4 (docs/definitions.md, 'Ablations')",
    description=(
        "100*(HIT@10 base - ablated)/base: lower = knowledge survives losing its top units "
        "(the paper's functional robustness); higher = the ablated units matter more causally"
    ),
)(drop_percent)
