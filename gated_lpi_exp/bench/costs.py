"""The cost model of one checkpoint's attribution: model dimensions, work counts, and time from rates.

Per batch of ``b`` prompts and per layer, ``gated_lpi`` does (the unit table of docs/definitions.md, ``engine.py``):

- FFN/expert neurons: projections of every column of every expert any of the ``b`` prompts routes to
  (``2·d·V`` FLOPs each; expected routed experts ``E·(1 − (1 − k/E)^b)`` under uniform routing) and of the
  ``s`` shared-expert neurons, and ``b·(k·w + s)·V`` fused exp-sum elements;
- attention neurons: ``H·d_h`` shared projections, ``b·H·d_h·V`` elements;
- heads and the two layer-level vectors: per-example projections, ``2·b·(H+2)·d·V`` FLOPs and
  ``b·(H+2)·V`` elements through the eager kernel;
- the two base states: ``2·2·b·d·V`` FLOPs; plus one forward pass (``2·active params·tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gated_lpi_exp.bench.machine import Rates

# NVIDIA H100 SXM5 (datasheet; 132 SMs at 1.98 GHz boost): FP32 on CUDA cores 66.9 TFLOP/s
# (132 SMs × 128 lanes × 2 × 1.98 GHz). TF32 tensor cores reach 494.7 TFLOP/s dense but round inputs to
# 10 mantissa bits, so the engine (float32, exact) does not use them. exp: 16 results/clock/SM from the
# special-function units (CUDA C++ Programming Guide, arithmetic instruction throughput, compute capability
# 9.0: exp2f/__expf) = 132 × 16 × 1.98 GHz = 4.18e12 per second; the adds and FMAs around each exp run on
# the 128 FP32 lanes and do not bind. Expected time assumes 70% of these peaks plus 0.3 ms of host work per
# kernel-chunk call (Python, launches).
H100_RATES = Rates(matmul_flops_per_s=66.9e12, exp_sum_compiled_per_s=4.18e12, exp_sum_kernel_per_s=0.0)
H100_TF32_FLOPS = 494.7e12
H100_EFFICIENCY = 0.7
H100_CALL_OVERHEAD_S = 3e-4
DEFAULT_CPU_EFFICIENCY = 0.8
"""Share of the roofline the engine reaches at real sizes when no benchmark report says otherwise
(``python -m gated_lpi_exp.bench`` measured 0.8-0.95 on a 2-core EPYC, see README)."""


@dataclass(frozen=True)
class ModelDims:
    """What the cost depends on; ``width`` is the expert width (MoE) or the FFN width (dense); ``shared`` the
    shared-expert neurons of an MoE layer, scored for every prompt. ``config`` is the ``config.json`` the
    dimensions were read from (``dims.py``), when there is one."""

    family: str
    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab: int
    width: int
    experts: int = 1
    top_k: int = 1
    shared: int = 0
    params: float = 0.0  # 0: computed from the dimensions (untied embeddings)
    source: str = ""
    config: dict | None = None

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def total_params(self) -> float:
        """Parameters: the table's count, else embeddings + attention + FFN/experts (+ router)."""
        if self.params:
            return self.params
        ffn = (self.experts * self.width + self.shared) * 3 * self.hidden
        ffn += self.hidden * self.experts if self.is_moe else 0
        attn = 4 * self.hidden * self.heads * self.head_dim
        return 2 * self.vocab * self.hidden + self.layers * (attn + ffn + 2 * self.hidden) + self.hidden

    @property
    def active_params(self) -> float:
        """Parameters a token uses (MoE: only its top-k experts)."""
        idle = self.layers * (self.experts - self.top_k) * 3 * self.hidden * self.width
        return self.total_params - idle


KNOWN_SERIES = {
    # repo: (branches, step spacing, where the number comes from)
    "allenai/OLMoE-1B-7B-0924": (244, 5000, "244 step branches on the hub"),
    "allenai/OLMo-7B": (556, 1000, "model card: every 1000 steps to step556000-tokens2460B"),
    "allenai/OLMo-7B-0424-hf": (489, 1000, "model card: every 1000 steps over 2.05T tokens at ~4.2M/step"),
    "allenai/OLMo-7B-0724-hf": (489, 1000, "model card: the 0424 checkpoints, copied"),
}

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}
STORED_BYTES_PER_PARAM = 4
"""The training branches of the known hub series are stored in float32 (about 27.6 GB per 6.9B-parameter
checkpoint), whatever ``model.dtype`` they are loaded in."""


@dataclass
class Work:
    """One checkpoint's attribution work, in total and by unit kind."""

    fused_elements: float = 0.0
    eager_elements: float = 0.0
    matmul_flops: float = 0.0
    forward_flops: float = 0.0
    calls: float = 0.0  # kernel-chunk calls (each carries fixed host-side work)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def elements(self) -> float:
        return self.fused_elements + self.eager_elements

    def add(self, part: str, elements: float, flops: float, fused: bool = True) -> None:
        """Count ``elements`` and projection ``flops`` of one unit kind."""
        if fused:
            self.fused_elements += elements
        else:
            self.eager_elements += elements
        self.matmul_flops += flops
        entry = self.parts.setdefault(part, {"elements": 0.0, "flops": 0.0})
        entry["elements"] += elements
        entry["flops"] += flops


def routed_experts(dims: ModelDims, batch: int) -> float:
    """Expected distinct experts that ``batch`` prompts route to at one layer (uniform routing)."""
    if not dims.is_moe:
        return 1.0
    return dims.experts * (1.0 - (1.0 - dims.top_k / dims.experts) ** batch)


def checkpoint_work(
    dims: ModelDims, batches: list[int], tokens_per_prompt: float = 16.0, chunk_neurons: int = 2000
) -> Work:
    """Work of one checkpoint whose examples are scored in batches of the given sizes.

    Args:
        dims: The model.
        batches: Prompts in each ``gated_lpi`` call.
        tokens_per_prompt: Mean prompt length, for the forward pass.
        chunk_neurons: Neurons per fused chunk (``fused_chunk_size``), to count calls.
    """
    work = Work()
    d, vocab, attn = dims.hidden, dims.vocab, dims.heads * dims.head_dim
    for b in batches:
        for _ in range(dims.layers):
            experts = routed_experts(dims, b)
            scored = dims.top_k * dims.width + dims.shared  # per prompt
            projected = experts * dims.width + dims.shared
            work.add("ffn", b * scored * vocab, 2 * projected * d * vocab)
            work.add("attn", b * attn * vocab, 2 * attn * d * vocab)
            work.add(
                "heads+layers", b * (dims.heads + 2) * vocab, 2 * b * (dims.heads + 2) * d * vocab, False
            )
            work.matmul_flops += 4 * b * d * vocab  # Q of the two base states
            work.calls += (
                experts * math.ceil(dims.width / chunk_neurons)
                + math.ceil(dims.shared / chunk_neurons)
                + math.ceil(attn / chunk_neurons)
                + 3
            )
        work.forward_flops += 2 * dims.active_params * b * tokens_per_prompt
    return work


def roofline_seconds(work: Work, rates: Rates) -> float:
    """Least time of ``work`` at ``rates``: FLOPs at the matmul rate, elements at the exp-sum rates."""
    eager = rates.exp_sum_eager_per_s or rates.exp_sum_per_s
    flops = work.matmul_flops + work.forward_flops
    return (
        flops / rates.matmul_flops_per_s
        + work.fused_elements / rates.exp_sum_per_s
        + work.eager_elements / eager
    )


def h100_seconds(work: Work) -> tuple[float, float]:
    """(least, expected) seconds of ``work`` on one H100 in float32 (see ``H100_RATES``)."""
    least = roofline_seconds(work, H100_RATES)
    return least, least / H100_EFFICIENCY + work.calls * H100_CALL_OVERHEAD_S
