"""Compatibility modes: score the way another implementation does, to measure how far it moves the numbers.

``released_code(model)`` reproduces the paper's released notebooks (no causal mask, final-norm ε 1e-6,
attention neurons per source position); ``attribution.compat=released_code`` runs a whole study that way.
See docs/released_code.md.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from torch import nn

from gated_lpi_exp.compat.released_code import DESCRIPTION as RELEASED_CODE_DESCRIPTION
from gated_lpi_exp.compat.released_code import key_padding_mask, released_code
from gated_lpi_exp.compat.state import ScoringMode, active_mode
from gated_lpi_exp.config import COMPAT_MODES

DESCRIPTIONS = {
    "none": "causal language model, the model's own final-norm epsilon (the project's default)",
    "released_code": RELEASED_CODE_DESCRIPTION,
}
"""Each mode in plain words, for run params and reports."""


def compat_mode(name: str, model: nn.Module) -> AbstractContextManager:
    """The context manager of mode ``name`` (one of :data:`COMPAT_MODES`) around ``model``.

    Raises:
        ValueError: An unknown mode.
    """
    if name == "none":
        return nullcontext(model)
    if name == "released_code":
        return released_code(model)
    raise ValueError(f"unknown compatibility mode {name!r}; choose one of {', '.join(COMPAT_MODES)}")


__all__ = [
    "COMPAT_MODES",
    "DESCRIPTIONS",
    "ScoringMode",
    "active_mode",
    "compat_mode",
    "key_padding_mask",
    "released_code",
]
