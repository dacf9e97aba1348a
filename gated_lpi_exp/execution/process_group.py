"""Split one run's checkpoints over processes, and make every process agree on success or failure.

A run launched as several processes (``accelerate launch --multi_gpu --num_processes N -m gated_lpi_exp``,
``torchrun --nproc_per_node N -m gated_lpi_exp``, or a submitit job with ``tasks_per_node=N``) gives each
process a share of the step-sorted checkpoints (:meth:`ProcessGroup.shard`) and a device of its own
(``cuda:<local rank>``, or the CPU). Every process computes its checkpoints and writes them to the result
store; process 0 then reads the others' results from that store and alone logs the MLflow run.

The processes only exchange small status objects, over a ``gloo`` group (CPU-side, whatever the default
backend is, with ``execution.timeout_min`` as its timeout): each collective phase ends with every process
saying whether it succeeded, so one failing process makes all of them fail with its message instead of
leaving the others waiting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from gated_lpi_exp.errors import GatedLPIError

log = logging.getLogger(__name__)

T = TypeVar("T")

_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(GatedLPIError):
    """Another process of a multi-process run failed (its message is included)."""


@dataclass
class ProcessGroup:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    """Global index of this process (0 logs the run)."""
    size: int = 1
    """Number of processes."""
    device: torch.device | None = None
    """This process's device, or None to use ``model.device`` as configured (single-process runs)."""
    _group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, device: str = "auto", timeout_min: int = 1440) -> ProcessGroup:
        """The group this process was launched in (a single process when no launcher set one up).

        Args:
            device: ``model.device``. ``auto`` and ``cuda`` give each process ``cuda:<local rank>`` when CUDA
                is present (else the CPU); ``cpu`` and ``cuda:N`` are kept as given.
            timeout_min: How long a process waits for the others in a collective.
        """
        _export_submitit_tasks()
        if _launched_size() <= 1 and not _initialised():
            if os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
                log.warning(
                    "accelerate launch --cpu started this single process (it needs MPI for more), so it walks "
                    "every checkpoint itself. For N processes on CPUs: accelerate launch --multi_gpu "
                    "--num_processes N ... (no GPU needed), or torchrun --nproc_per_node N -m gated_lpi_exp."
                )
            return cls()
        from accelerate import PartialState

        on_cpu = (
            device == "cpu"
            or not torch.cuda.is_available()
            or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        )
        state = PartialState(cpu=on_cpu, timeout=timedelta(minutes=timeout_min))
        if state.num_processes <= 1:
            return cls()
        own = None if device.startswith("cuda:") or device == "mps" else state.device
        group = torch.distributed.new_group(backend="gloo", timeout=timedelta(minutes=timeout_min))
        log.info("process %d of %d on %s", state.process_index, state.num_processes, own or device)
        return cls(state.process_index, state.num_processes, own, group)

    def plan(self, items: Sequence[T], how: str = "round_robin") -> list[list[T]]:
        """Every process's share of ``items`` (the step-sorted checkpoints), in process order.

        Args:
            items: The whole list, identical on every process.
            how: ``round_robin`` (process r takes items r, r+P, r+2P, ...) or ``contiguous`` (the r-th of P
                consecutive blocks, the first blocks one longer when P does not divide the length).
        """
        if how == "round_robin":
            return [list(items[r :: self.size]) for r in range(self.size)]
        base, extra = divmod(len(items), self.size)
        starts = [r * base + min(r, extra) for r in range(self.size + 1)]
        return [list(items[starts[r] : starts[r + 1]]) for r in range(self.size)]

    def shard(self, items: Sequence[T], how: str = "round_robin") -> list[T]:
        """This process's share of ``items`` (see :meth:`plan`)."""
        return self.plan(items, how)[self.rank]

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` here, then wait until every process has run its own; fail everywhere if one failed.

        Returns:
            This process's value of ``fn``.

        Raises:
            The exception ``fn`` raised here, or :class:`DistributedError` naming the process that failed
            and its message.
        """
        try:
            value, error = fn(), None
        except Exception as exc:  # reported to the other processes, then raised here
            value, error = None, exc
        if self.size > 1:
            report = None if error is None else f"{type(error).__name__}: {error}"
            failed = [(rank, msg) for rank, msg in enumerate(self.gather(report)) if msg]
            if error is None and failed:
                rank, msg = failed[0]
                raise DistributedError(f"process {rank} of {self.size} failed: {msg}")
        if error is not None:
            raise error
        return value  # type: ignore[return-value]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (small and picklable), in process order, on every process."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value, group=self._group)
        return out


def _launched_size() -> int:
    for var in _WORLD_SIZE_VARS:
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _export_submitit_tasks() -> None:
    """Inside a submitit job with several tasks (``hydra.launcher.tasks_per_node>1``), set the variables
    ``torch.distributed`` reads (RANK, WORLD_SIZE, MASTER_ADDR, ...), so the tasks form one run."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    try:
        if JobEnvironment().num_tasks <= 1:
            return
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except RuntimeError as exc:  # not inside a submitit job after all
        log.debug("no submitit task environment: %s", exc)
