"""Which scoring mode is active on which model, read by the attribution engine.

A compatibility mode (see :mod:`gated_lpi_exp.compat.released_code`) registers its settings here for the
model it wraps, for the duration of its ``with`` block; the engine asks :func:`active_mode` what to change.
Nothing here imports the engine, so the engine can import this module without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

from torch import nn


@dataclass(frozen=True)
class ScoringMode:
    """What a compatibility mode changes in the engine's scores for one model."""

    name: str
    """The mode's config name (``attribution.compat``)."""
    final_norm_eps: float | None
    """ε of the final norm's scale in φ; None keeps the model's own."""
    attn_positions: bool
    """Whether attention neurons are scored per source position unless the caller says otherwise."""


_ACTIVE: WeakKeyDictionary[nn.Module, ScoringMode] = WeakKeyDictionary()


def active_mode(model: nn.Module) -> ScoringMode | None:
    """The compatibility mode active on ``model``, or None outside every mode."""
    return _ACTIVE.get(model)


def activate(model: nn.Module, mode: ScoringMode) -> None:
    """Register ``mode`` on ``model`` (the mode's context manager calls this; it refuses nesting)."""
    _ACTIVE[model] = mode


def deactivate(model: nn.Module) -> None:
    """Remove whatever mode is registered on ``model``."""
    _ACTIVE.pop(model, None)
