"""One FFN layer of real size with random weights, scored by the engine and by the anchor-style reference.

The engine path is ``engine.score_neurons``, the function ``gated_lpi`` runs for every FFN/MoE layer: the
shared projections ``P = W_U(γ ⊙ center(col))`` of each routed expert's columns, then the fused exp-sum.
The reference is how the public notebooks do it: materialise each neuron's residual ``base + c_v``, push all
of an expert's (or the dense layer's) residuals through the final norm and the full unembedding in one
matmul, then ``log_softmax``. Both use ``norm=frozen``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from gated_lpi_exp.adapters import FFNNeurons, NeuronGroup, NormSpec
from gated_lpi_exp.attribution import kernels
from gated_lpi_exp.attribution.engine import Budget, score_neurons
from gated_lpi_exp.attribution.projection import BaseState, Projection
from gated_lpi_exp.bench.machine import PeakMemory, Rates


@dataclass(frozen=True)
class LayerShape:
    """One FFN/MoE layer and the batch it is scored on."""

    name: str
    hidden: int
    vocab: int
    experts: int  # 1 for a dense layer
    width: int  # neurons per expert (dense: the FFN width)
    top_k: int  # experts per prompt (dense: 1)
    prompts: int
    reference_prompts: int  # prompts the reference is timed on (its cost per element is batch-independent)
    norm: Literal["rms", "layer"]  # "rms" (OLMoE: RMSNorm with γ), "layer" (OLMo: parameter-free LayerNorm)
    shared: int = 0  # shared-expert neurons, scored for every prompt (Qwen2-MoE, DeepSeek)

    @property
    def elements(self) -> int:
        """Prompt × scored neuron × vocabulary elements (routed and shared neurons)."""
        return self.prompts * (self.top_k * self.width + self.shared) * self.vocab


DEFAULT_SHAPES = (
    LayerShape("moe", 2048, 50304, 16, 1024, 2, 128, 4, "rms"),
    LayerShape("moe_shared", 2048, 50304, 16, 1024, 2, 128, 4, "rms", shared=2048),
    LayerShape("dense", 2048, 50304, 1, 8192, 1, 32, 2, "layer"),
)
QUICK_SHAPES = (
    LayerShape("moe", 256, 4096, 8, 128, 2, 32, 4, "rms"),
    LayerShape("moe_shared", 256, 4096, 8, 128, 2, 32, 4, "rms", shared=256),
    LayerShape("dense", 256, 4096, 1, 1024, 1, 16, 2, "layer"),
)
"""``moe``: an OLMoE-width layer. ``moe_shared``: the same routed experts plus a sigmoid-gated shared expert
of two experts' width, as Qwen2-MoE / DeepSeek layers have; its throughput per scored neuron is reported
relative to ``moe``'s (``shared_vs_moe``)."""


@dataclass
class SyntheticLayer:
    """Random weights and activations of one layer, and the engine's view of them."""

    shape: LayerShape
    w_u: Tensor  # [V, d] unembedding as stored
    spec: NormSpec
    h_final: Tensor  # [prompts, d]
    base_states: Tensor  # [prompts, d] r_mid
    target: Tensor  # [prompts]
    neurons: FFNNeurons
    projection: Projection
    base: BaseState

    @property
    def projected_neurons(self) -> int:
        """Neurons whose projection the engine computes: every column of every routed expert."""
        return sum(group.size for group in self.neurons.groups)


def build_layer(shape: LayerShape, seed: int = 0) -> SyntheticLayer:
    """Random layer with realistic scales: logits of std ~2, contributions much smaller than the base."""
    gen = torch.Generator().manual_seed(seed)
    d, vocab, batch = shape.hidden, shape.vocab, shape.prompts

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=gen)

    w_u = randn(vocab, d) * (2.0 / d**0.5)  # [V, d]
    gamma = 1.0 + 0.1 * randn(d) if shape.norm == "rms" else None
    spec = NormSpec(kind=shape.norm, weight=gamma, bias=None, eps=1e-5)
    h_final = randn(batch, d)  # [prompts, d]
    base_states = h_final + 0.5 * randn(batch, d)  # [prompts, d]
    target = torch.randint(vocab, (batch,), generator=gen)
    columns = randn(shape.experts, d, shape.width) / shape.width**0.5  # [E, d, width]
    if shape.experts == 1:
        coef = randn(batch, shape.width)  # [prompts, width] m_j
        neurons = FFNNeurons(coef=coef, groups=[NeuronGroup(start=0, columns=columns[0])])
    else:
        neurons = _moe_neurons(shape, columns, gen)
    projection = Projection.from_parts(spec, w_u, h_final, target, "frozen")
    base = projection.base(base_states)
    return SyntheticLayer(shape, w_u, spec, h_final, base_states, target, neurons, projection, base)


def _moe_neurons(shape: LayerShape, columns: Tensor, gen: torch.Generator) -> FFNNeurons:
    """Routed experts expert-major, then (if any) a shared expert gated by a sigmoid, as the adapters lay out."""
    batch, experts, width = shape.prompts, shape.experts, shape.width
    routing = torch.rand(batch, experts, generator=gen).argsort(1)[:, : shape.top_k]  # [prompts, top_k]
    gates = torch.softmax(torch.randn(batch, experts, generator=gen), dim=1).gather(1, routing)
    coef = torch.zeros(batch, experts * width + shape.shared)  # [prompts, neurons]; unrouted experts stay 0
    routed = torch.zeros(batch, experts, dtype=torch.bool)
    groups = []
    for e in routing.unique().tolist():
        rows, slot = (routing == e).nonzero(as_tuple=True)
        m = torch.randn(rows.numel(), width, generator=gen)
        coef[rows, e * width : (e + 1) * width] = gates[rows, slot, None] * m
        routed[rows, e] = True
        groups.append(NeuronGroup(start=e * width, columns=columns[e], rows=rows))
    if shape.shared:
        shared = torch.randn(shape.hidden, shape.shared, generator=gen) / shape.shared**0.5  # [d, shared]
        gate = torch.sigmoid(torch.randn(batch, 1, generator=gen))  # [prompts, 1]
        coef[:, experts * width :] = gate * torch.randn(batch, shape.shared, generator=gen)
        groups.append(NeuronGroup(start=experts * width, columns=shared))
    return FFNNeurons(coef=coef, groups=groups, routed=routed)


def run_engine(layer: SyntheticLayer, budget_mb: float, kernel: str = "auto", repeat: int = 2) -> dict:
    """Time ``score_neurons`` on the whole batch (best of ``repeat``) and record its peak memory.

    Returns:
        ``seconds`` (best), ``runs``, ``peak_mem_mb`` (largest over runs, see ``PeakMemory``), ``kernel``
        (the backend that ran) and ``scores`` ``[prompts, ffn_neurons]``.
    """
    with kernels.use_kernel(kernel):
        budget = Budget(budget_mb, kernels.resolve_kernel("cpu"))
        _warm_up(layer, budget)
        runs, peaks, scores = [], [], None
        for _ in range(repeat):
            scores = None  # drop the previous run's output before measuring again
            with PeakMemory() as memory:
                start = time.perf_counter()
                scores = score_neurons(layer.projection, layer.base, layer.neurons, budget)
                runs.append(time.perf_counter() - start)
            peaks.append(memory.peak_mb)
    known = [p for p in peaks if p is not None]
    return {
        "seconds": min(runs),
        "runs": runs,
        "peak_mem_mb": max(known) if known else None,
        "kernel": budget.kernel,
        "scores": scores,
    }


def _warm_up(layer: SyntheticLayer, budget: Budget) -> None:
    """Build or compile the backend on a small slice, outside the timed runs."""
    group = layer.neurons.groups[0]
    small = NeuronGroup(start=group.start, columns=group.columns[:, :8], rows=group.rows)
    few = FFNNeurons(coef=layer.neurons.coef, groups=[small])
    score_neurons(layer.projection, layer.base, few, budget)


def run_reference(layer: SyntheticLayer, prompts: int) -> tuple[list[float], Tensor]:
    """Anchor-style scores of the first ``prompts`` prompts: (seconds per prompt, ``[prompts, neurons]``).

    Independent of the engine: it uses the stored ``W_U`` and γ, the frozen scale of ``h_final``, and
    ``log_softmax`` over ``[neurons, V]`` logits. Unrouted experts are left NaN (never compared). Every
    prompt costs the same (``top_k · width`` neurons), so the fastest one is the least noisy timing.
    """
    spec, w_u = layer.spec, layer.w_u
    coef = layer.neurons.coef
    out = torch.full((prompts, coef.shape[1]), float("nan"))
    seconds = []
    for p in range(prompts):
        start = time.perf_counter()
        h = _center(layer.h_final[p], spec.kind)
        scale = torch.rsqrt(h.pow(2).mean() + spec.eps)  # frozen: the scale the final norm takes at h_L
        if spec.weight is not None:
            scale = spec.weight * scale  # [d]
        target = int(layer.target[p])
        base_logits = (_center(layer.base_states[p], spec.kind) * scale) @ w_u.T  # [V]
        base_lp = torch.log_softmax(base_logits, dim=-1)[target]
        for group in layer.neurons.groups:
            if group.rows is not None and p not in group.rows.tolist():
                continue
            span = slice(group.start, group.start + group.size)
            resid = layer.base_states[p] + coef[p, span, None] * group.columns.T  # [n, d] base + c_v
            logits = (_center(resid, spec.kind) * scale) @ w_u.T  # [n, V] in one matmul
            out[p, span] = torch.log_softmax(logits, dim=-1)[:, target] - base_lp
        seconds.append(time.perf_counter() - start)
    return seconds, out


def _center(u: Tensor, kind: str) -> Tensor:
    return u - u.mean(-1, keepdim=True) if kind == "layer" else u


def measure_shape(shape: LayerShape, budget_mb: float, repeat: int = 2, kernel: str = "auto") -> dict:
    """Time the engine and the reference on one shape; :func:`summarise` adds the roofline figures."""
    layer = build_layer(shape)
    engine = run_engine(layer, budget_mb, kernel, repeat)
    ref_prompts = min(shape.reference_prompts, shape.prompts)
    ref_seconds, ref_scores = run_reference(layer, ref_prompts)
    per_prompt_elements = shape.elements // shape.prompts
    compared = ~torch.isnan(ref_scores)
    diff = (engine["scores"][:ref_prompts] - ref_scores).abs()[compared]
    seconds, elements = engine["seconds"], shape.elements
    ref_per_element = min(ref_seconds) / per_prompt_elements
    return {
        "shape": asdict(shape),
        "kernel": engine["kernel"],
        "elements": elements,
        "matmul_flops": 2 * layer.projected_neurons * shape.hidden * shape.vocab,
        "engine_s": seconds,
        "engine_runs_s": engine["runs"],
        "elements_per_s": elements / seconds,
        "reference_prompts": ref_prompts,
        "reference_s_per_prompt": ref_seconds,
        "reference_s_per_element": ref_per_element,
        "reference_s_full_batch": ref_per_element * elements,
        "speedup_vs_reference": ref_per_element * elements / seconds,
        "peak_mem_mb": engine["peak_mem_mb"],
        "within_budget": engine["peak_mem_mb"] is not None and engine["peak_mem_mb"] <= budget_mb,
        "max_abs_diff": float(diff.max()) if diff.numel() else float("nan"),
        "compared_scores": int(diff.numel()),
    }


def summarise(result: dict, rates: Rates) -> dict:
    """Add the roofline of ``result``'s work at ``rates``: least time, its split, and the efficiency."""
    matmul_s = result["matmul_flops"] / rates.matmul_flops_per_s
    exp_s = result["elements"] / rates.exp_sum_per_s
    return {
        **result,
        "ceiling_s": matmul_s + exp_s,
        "ceiling_matmul_s": matmul_s,
        "ceiling_exp_s": exp_s,
        "efficiency_vs_ceiling": (matmul_s + exp_s) / result["engine_s"],
    }
