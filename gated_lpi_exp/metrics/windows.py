"""Selecting checkpoints by training-step window, so dynamics metrics can be computed per named phase."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_mask(steps: Sequence[int], start: int | None, stop: int | None) -> np.ndarray:
    """Boolean mask of the checkpoints with ``start <= step < stop``.

    Args:
        steps: Training step of each checkpoint, shape ``[S]`` (any order).
        start: Inclusive lower bound; ``None`` means unbounded.
        stop: Exclusive upper bound; ``None`` means unbounded.

    Returns:
        bool array, shape ``[S]``.

    Raises:
        ValueError: ``steps`` is not 1-D, or ``start > stop``.
    """
    s = np.asarray(steps, dtype=np.int64)
    if s.ndim != 1:
        raise ValueError(f"steps must be 1-D, got shape {s.shape}")
    if start is not None and stop is not None and start > stop:
        raise ValueError(f"window start ({start}) is after its stop ({stop})")
    mask = np.ones(s.shape, dtype=bool)
    if start is not None:
        mask &= s >= start
    if stop is not None:
        mask &= s < stop
    return mask
