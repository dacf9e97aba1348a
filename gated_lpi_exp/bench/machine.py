"""What this machine can do: its description, its float32 matmul and exp-sum rates, and peak memory.

The two rates are the roofline of Gated-LPI: every neuron costs a projection (matmul FLOPs) and every
prompt × neuron × vocabulary element costs one exponential inside a sum (exp-sum elements).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from gated_lpi_exp.attribution import kernels


@dataclass
class Rates:
    """Measured throughputs, float32, with the threads torch uses."""

    matmul_flops_per_s: float
    """A large ``torch.matmul`` (``2·m·k·n`` FLOPs per call)."""
    exp_sum_compiled_per_s: float
    """Elements per second of a ``torch.compile``'d ``logsumexp`` over a large tensor."""
    exp_sum_kernel_per_s: float
    """Elements per second of the engine's own fused exp-sum backend run as a plain logsumexp (0 if none)."""
    exp_sum_eager_per_s: float = 0.0
    """Elements per second of eager ``torch.logsumexp`` (the engine's unfused path: heads, layer vectors)."""

    @property
    def exp_sum_per_s(self) -> float:
        """The best exp-sum rate measured here: the roofline's exponential rate."""
        return max(self.exp_sum_compiled_per_s, self.exp_sum_kernel_per_s)

    def to_dict(self) -> dict:
        """Plain dict, with the derived ``exp_sum_per_s``."""
        return {**asdict(self), "exp_sum_per_s": self.exp_sum_per_s}

    @classmethod
    def from_dict(cls, data: dict) -> Rates:
        """Inverse of :meth:`to_dict` (extra keys ignored, missing optional rates 0)."""
        return cls(**{f.name: float(data[f.name]) for f in fields(cls) if f.name in data})


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (noise on a shared machine only ever adds time)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_rates(quick: bool = False, repeat: int | None = None) -> Rates:
    """Measure the matmul and exp-sum rates on this machine.

    Args:
        quick: Smaller operands (seconds, not tens of seconds); rates are a little lower.
        repeat: Calls per measurement, the fastest counts (default 3 quick, 5 otherwise).
    """
    repeat = repeat or (3 if quick else 5)
    gen = torch.Generator().manual_seed(0)
    m, k, n = (512, 1024, 4096) if quick else (2048, 2048, 8192)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    torch.matmul(a, b)
    matmul = 2 * m * k * n / best_time(lambda: torch.matmul(a, b), repeat)
    rows, vocab = (64, 16384) if quick else (512, 50304)
    x = torch.randn(rows, vocab, generator=gen)  # [rows, V], 100 MB at full size
    lse = _compiled_logsumexp()
    lse(x)
    compiled = x.numel() / best_time(lambda: lse(x), repeat)
    eager = x.numel() / best_time(lambda: torch.logsumexp(x, dim=1), repeat)
    return Rates(matmul, compiled, _kernel_rate(x, repeat), eager)


@functools.cache
def _compiled_logsumexp() -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.compile(functools.partial(torch.logsumexp, dim=1))


def _kernel_rate(x: torch.Tensor, repeat: int) -> float:
    """The engine's fused backend on ``logsumexp(x)``: ``q = x``, one all-zero projection row."""
    backend = kernels.resolve_kernel("cpu")
    if backend == "eager":
        return 0.0
    rows = x.shape[0]
    proj = torch.zeros(1, x.shape[1])  # [1, V]
    a, c = torch.ones(rows, 1), torch.zeros(rows, 1)
    shift = x.amax(1, keepdim=True)  # [rows, 1]

    def run() -> torch.Tensor:
        return kernels.expsum(x, proj, a, c, shift, None, backend)

    run()
    return x.numel() / best_time(run, repeat)


def machine_info() -> dict:
    """Cores, CPU model, torch version and threads, and the exp-sum backend the engine will use."""
    model = platform.processor() or platform.machine()
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "kernel": kernels.resolve_kernel("cpu"),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


class PeakMemory:
    """Peak resident memory of this process above its level at entry, in MiB (Linux ``VmHWM``).

    tracemalloc does not see torch's allocations, so this reads the kernel's own high-water mark: entry
    resets it (``/proc/self/clear_refs``), exit reads ``VmHWM − VmRSS(entry)``. It counts every byte the
    block touches (tensors, the matmul's packing buffers, allocator slack), not only live tensors. Where
    ``/proc`` is missing it samples ``ru_maxrss`` and reports None if the peak cannot be reset.
    """

    def __enter__(self) -> PeakMemory:
        self.peak_mb: float | None = None
        self._resettable = _reset_peak()
        self._start = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kb("VmHWM")
        if self._resettable and peak is not None and self._start is not None:
            self.peak_mb = max(0.0, (peak - self._start) / 1024)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> float | None:
    try:
        match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return float(match.group(1)) if match else None
