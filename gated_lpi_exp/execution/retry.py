"""Out-of-memory retry for the attribution stage: halve the memory budget and try again, down to a floor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from gated_lpi_exp.errors import AttributionError

log = logging.getLogger(__name__)

T = TypeVar("T")

OUT_OF_MEMORY: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)
"""What a device out-of-memory raises (one class in recent torch; both names are caught)."""


def retry_out_of_memory(attempt: Callable[[int], T], budget_mb: int, floor_mb: int, *, where: str) -> T:
    """Call ``attempt(budget)``; on out-of-memory, free the CUDA cache and retry with half the budget.

    Work finished before the error is not lost: the attribution stage caches each relation as it completes,
    so a retry recomputes only the relation that ran out of memory and those after it.

    Args:
        attempt: Runs the stage with a memory budget in MB (``attribution.memory_budget_mb``).
        budget_mb: The first budget.
        floor_mb: The smallest budget tried (``attribution.min_memory_budget_mb``).
        where: What is being computed, for the messages (e.g. ``checkpoint step 1000``).

    Raises:
        AttributionError: still out of memory at the floor (names the budget and the fix).
    """
    budget = budget_mb
    while True:
        try:
            return attempt(budget)
        except OUT_OF_MEMORY as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if budget // 2 < floor_mb:
                raise AttributionError(
                    f"Out of memory in the attribution of {where}, even with attribution.memory_budget_mb="
                    f"{budget} (the floor is attribution.min_memory_budget_mb={floor_mb}). Fix: lower "
                    "attribution.batch_size, use a device with more memory, or lower the floor."
                ) from exc
            log.warning(
                "%s: out of memory with attribution.memory_budget_mb=%d; retrying with %d",
                where,
                budget,
                budget // 2,
            )
            budget //= 2
