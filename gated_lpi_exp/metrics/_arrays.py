"""Input coercion for the metric functions: numpy arrays or torch tensors in, float64/int64 numpy out."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    # Duck-typed so this package never imports torch; bf16/fp16 tensors have no numpy dtype, hence .double().
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.dtype.is_floating_point:
            t = t.double()
        return t.numpy()
    return np.asarray(x)


def as_float(x: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Returns ``x`` as a float64 array after checking its rank and that it holds no NaN/inf.

    Args:
        x: Array-like or torch tensor.
        name: Argument name used in error messages.
        ndim: Accepted rank(s).

    Raises:
        ValueError: Wrong rank or non-finite values.
    """
    arr = np.asarray(_to_numpy(x), dtype=np.float64)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; metrics are only defined on finite scores")
    return arr


def as_int(x: Any, name: str, ndim: int) -> np.ndarray:
    """Returns ``x`` as an int64 array of rank ``ndim``; rejects non-integral values."""
    raw = _to_numpy(x)
    arr = np.asarray(raw)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def top_count(n: int, top_frac: float) -> int:
    """Returns ``ceil(top_frac * n)`` computed exactly, as the size of a top set.

    The product is formed from the shortest decimal form of ``top_frac`` (``Fraction(repr(...))``), so
    ``0.07 * 100`` gives 7, whereas float arithmetic gives 7.000000000000001 and a naive ceil gives 8.

    Args:
        n: Population size, >= 1.
        top_frac: Fraction in (0, 1].

    Raises:
        ValueError: ``n < 1`` or ``top_frac`` outside (0, 1].
    """
    if n < 1:
        raise ValueError(f"population size must be >= 1, got {n}")
    top_frac = float(top_frac)
    if not 0.0 < top_frac <= 1.0:
        raise ValueError(f"top_frac must be in (0, 1], got {top_frac}")
    return math.ceil(Fraction(repr(top_frac)) * n)
