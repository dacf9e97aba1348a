"""Step grids: segments ``[start, stop, every]`` expanded to training steps (``checkpoints.select=grid``).

The paper's grid is every 10K steps from 10K to 70K, then every 100K from 100K to the series' end (600K for
OLMo-7B, 1.2M for OLMoE); ``conf/checkpoints/paper.yaml`` writes it as
``[[10000, 70000, 10000], [100000, ${model.series_end}, 100000]]``. The expanded steps are then matched to
the series' real checkpoints like an explicit step list.
"""

from __future__ import annotations

from collections.abc import Sequence

from gated_lpi_exp.errors import ConfigurationError


def grid_steps(grid: Sequence[Sequence[int | None]], end: int) -> list[int]:
    """The sorted, distinct steps of every segment.

    Args:
        grid: Segments ``[start, stop, every]``: ``start, start + every, ...`` while ``<= stop``; a ``None``
            stop is ``end``.
        end: The series' end, used for open segments.

    Returns:
        Steps in increasing order.

    Raises:
        ConfigurationError: A segment is malformed, or an open segment starts after ``end``.
    """
    steps: set[int] = set()
    for segment in grid:
        if len(segment) != 3 or segment[0] is None or segment[2] is None or segment[2] <= 0:
            raise ConfigurationError(
                f"checkpoints.grid segment {list(segment)} must be [start, stop, every]."
            )
        start, stop, every = int(segment[0]), segment[1], int(segment[2])
        last = end if stop is None else int(stop)
        if last < start:
            raise ConfigurationError(
                f"checkpoints.grid segment {list(segment)} ends at step {last}, before its start {start}"
                + (
                    " (stop null is the series' end: model.series_end, else the last checkpoint)."
                    if stop is None
                    else "."
                )
            )
        steps.update(range(start, last + 1, every))
    return sorted(steps)
