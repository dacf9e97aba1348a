"""Dynamics and evaluation metrics (paper eqs. 6-11): pure numpy, numpy arrays or torch tensors in.

Conventions shared by the functions (details in each docstring):

- Top sets hold ``ceil(top_frac · N)`` members, the ceil computed exactly (``0.07 · 100`` -> 7); ranking is by
  ``|score|`` with ties to the lower index.
- Checkpoints are rows in training-step order; step-to-step metrics need >= 2 rows (else ``ValueError``).
- Undefined values are NaN and are skipped in averages: R_t layers with no positive gain, ρ_avg pairs with a
  constant profile, σ_rel layers with zero mean, drop % with a zero baseline. Non-finite inputs raise.
- HIT@k counts a hit when fewer than k logits are strictly greater than the target's logit.

Every metric the pipeline computes is registered in :mod:`gated_lpi_exp.metrics.registry`.
"""

from gated_lpi_exp.metrics._arrays import top_count
from gated_lpi_exp.metrics.layers import cross_step_cv, layer_consistency
from gated_lpi_exp.metrics.neurons import (
    gain_concentration,
    jaccard_stability,
    pooled_gain_concentration,
    positive_gain_concentration,
    top_set,
    top_set_overlap,
)
from gated_lpi_exp.metrics.prediction import MIN_BASE_HIT10, drop_percent, gold_ranks, hit_at_k, hit_rate
from gated_lpi_exp.metrics.registry import (
    AGGREGATIONS,
    DISPLAY,
    INPUTS,
    METRICS,
    Display,
    MetricSpec,
    get_metric,
    metric_versions,
    metrics_for,
    register_metric,
)
from gated_lpi_exp.metrics.windows import window_mask

__all__ = [
    "AGGREGATIONS",
    "DISPLAY",
    "INPUTS",
    "METRICS",
    "Display",
    "MIN_BASE_HIT10",
    "MetricSpec",
    "cross_step_cv",
    "drop_percent",
    "gain_concentration",
    "get_metric",
    "gold_ranks",
    "hit_at_k",
    "hit_rate",
    "jaccard_stability",
    "layer_consistency",
    "metric_versions",
    "metrics_for",
    "pooled_gain_concentration",
    "positive_gain_concentration",
    "register_metric",
    "top_count",
    "top_set",
    "top_set_overlap",
    "window_mask",
]
