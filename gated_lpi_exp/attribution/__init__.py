"""Gated-LPI attribution: per-example importance of every neuron, head and layer (docs/definitions.md)."""

from gated_lpi_exp.attribution.capture import Captured, capture
from gated_lpi_exp.attribution.engine import gated_lpi
from gated_lpi_exp.attribution.projection import NORM_MODES, Projection, chunk_scores, chunk_size
from gated_lpi_exp.attribution.result import Attribution
from gated_lpi_exp.attribution.targets import (
    final_logits,
    gold_targets,
    last_token_positions,
    position_ids_from_mask,
    predicted_targets,
)

__all__ = [
    "NORM_MODES",
    "Attribution",
    "Captured",
    "Projection",
    "capture",
    "chunk_scores",
    "chunk_size",
    "final_logits",
    "gated_lpi",
    "gold_targets",
    "last_token_positions",
    "position_ids_from_mask",
    "predicted_targets",
]
