"""What every routed-experts family shares: fused experts, the FFN layout, shared experts, dense layers.

Per layer the FFN index runs over the routed experts expert-major (``e * expert_width + j``), then the
shared-expert neurons (``n_experts * expert_width + j``). A neuron's coefficient is what the block multiplies
its down-projection column by: the family's routing weight ``g_e`` (``gates``) times ``m``, and for a shared
expert its gate (``shared_gate``, 1 when ungated) times ``m``. Experts not routed at T score exactly 0.

Some stacks mix dense layers into an MoE model (DeepSeek's first layers, Qwen-MoE's ``mlp_only_layers``).
Their neurons take indices ``0 .. d_ff-1`` of the same per-layer width; indices past a layer's own width are
padding: they always score exactly 0, and ablating one zeroes nothing.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor, nn

from gated_lpi_exp.adapters.base import FFNNeurons, ModelAdapter, NeuronGroup, NormSpec, WeightSlice, rms_spec
from gated_lpi_exp.adapters.mlp import (
    check_fused_experts,
    expert_activations,
    expert_down,
    expert_down_index,
    gated_mlp_activations,
    mlp_width,
)
from gated_lpi_exp.errors import AttributionError


class MoEAdapter(ModelAdapter):
    """Fused routed experts under ``mlp.experts``, a router under ``mlp.gate``, RMSNorm final norm."""

    is_moe = True
    SITES = {
        **ModelAdapter.SITES,
        "router": "model.layers.{layer}.mlp.gate",
        "experts": "model.layers.{layer}.mlp.experts",
    }
    SHARED: ClassVar[str | None] = None
    """Attribute of the MoE block holding the shared expert(s) as one gated MLP, if the family has one."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.moe_layers = [layer for layer in range(self.n_layers) if hasattr(self.mlp(layer), "experts")]
        if not self.moe_layers:
            raise AttributionError(f"{self.family}: no layer has routed experts (mlp.experts)")
        first = self.moe_layers[0]
        self.n_experts = self.router(first).weight.shape[0]
        self.top_k = int(self.router(first).top_k)
        self.expert_width = expert_down(self.experts(first), 0).shape[1]
        shared = self.shared_mlp(first)
        self.shared_width = mlp_width(shared) if shared is not None else 0
        for layer in self.moe_layers:
            check_fused_experts(self.experts(layer), self.family)
        dense = [mlp_width(self.mlp(layer)) for layer in range(self.n_layers) if not self.routed_layer(layer)]
        self._width = max([self.routed_width + self.shared_width, *dense])

    @property
    def routed_width(self) -> int:
        """Routed-expert neurons per MoE layer: ``n_experts * expert_width``."""
        return self.n_experts * self.expert_width

    @property
    def ffn_neurons(self) -> int:
        """FFN indices per layer: routed + shared neurons (or a wider dense layer's width)."""
        return self._width

    def routed_layer(self, layer: int) -> bool:
        """Whether ``layer`` has routed experts (a dense layer of a mixed stack has none)."""
        return layer in self.moe_layers

    def router(self, layer: int) -> nn.Module:
        """The top-k router: ``weight [E, d]``, forward -> (logits, top_k_weights, top_k_index)."""
        return self.module("router", layer)

    def experts(self, layer: int) -> nn.Module:
        """The fused experts (``gate_up_proj``, ``down_proj``, ``act_fn``)."""
        return self.module("experts", layer)

    def shared_mlp(self, layer: int) -> nn.Module | None:
        """The shared expert(s) of an MoE layer as one gated MLP, or None."""
        return getattr(self.mlp(layer), self.SHARED) if self.SHARED else None

    def shared_gate(self, layer: int, x_hat: Tensor) -> Tensor | None:
        """``[batch]`` what the block multiplies the shared expert's output by; None means 1."""
        return None

    @abc.abstractmethod
    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """``[batch, top_k]`` float32 weights the block gives the experts in ``routing`` (after any
        renormalisation or scaling), recomputed from ``x_hat`` in float32."""

    def final_norm_spec(self) -> NormSpec:
        """RMSNorm with gain γ and no bias."""
        return rms_spec(self.final_norm())

    def read_routing(self, router_output: object) -> Tensor:
        """The router returns ``(logits, top_k_weights, top_k_index)``; index is ``[tokens, top_k]``."""
        return router_output[2]

    def choose_experts(self, layer: int, x_hat: Tensor) -> Tensor:
        """``[batch, top_k]`` the experts the model's own router picks for ``x_hat``."""
        router = self.router(layer)
        return self.read_routing(router(x_hat.to(router.weight.dtype)))

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """``coef[b, e*w + j] = g_e · m_{e,j}`` for routed experts (0 elsewhere), then the shared neurons.

        The choice of experts is the model's own (``routing``) so the neurons sum to the block output the
        model computed, even where a bf16 near-tie could flip a recompute.
        """
        batch, width = x_hat.shape[0], self.expert_width
        coef = x_hat.new_zeros(batch, self.ffn_neurons)  # [batch, ffn_neurons]
        routed = torch.zeros(batch, self.n_experts, dtype=torch.bool, device=x_hat.device)
        if not self.routed_layer(layer):
            mlp = self.mlp(layer)
            coef[:, : mlp_width(mlp)] = gated_mlp_activations(mlp, x_hat)
            return FFNNeurons(coef, [NeuronGroup(0, mlp.down_proj.weight)], routed)
        if routing is None:
            routing = self.choose_experts(layer, x_hat)
        routing = routing.to(x_hat.device)
        gates = self.gates(layer, x_hat, routing)  # [batch, top_k]
        routed[torch.arange(batch, device=x_hat.device)[:, None], routing] = True
        experts, groups = self.experts(layer), []
        for e in routing.unique().tolist():
            rows, slot = (routing == e).nonzero(as_tuple=True)
            m = expert_activations(experts, e, x_hat[rows])  # [rows, w]
            coef[rows, e * width : (e + 1) * width] = gates[rows, slot, None] * m
            groups.append(NeuronGroup(start=e * width, columns=expert_down(experts, e), rows=rows))
        shared = self.shared_mlp(layer)
        if shared is not None:
            m = gated_mlp_activations(shared, x_hat)  # [batch, shared_width]
            gate = self.shared_gate(layer, x_hat)
            coef[:, self.routed_width : self.routed_width + self.shared_width] = (
                m if gate is None else gate[:, None] * m
            )
            groups.append(NeuronGroup(start=self.routed_width, columns=shared.down_proj.weight))
        return FFNNeurons(coef=coef, groups=groups, routed=routed)

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """The down-projection column of each neuron: expert ``e``'s ``W_down^e[:, j]``, or the shared
        expert's column; padding indices of a dense layer have none."""
        if not self.routed_layer(layer):
            weight = self.mlp(layer).down_proj.weight
            kept = [n for n in neurons if n < weight.shape[1]]
            return [(weight, (slice(None), torch.tensor(kept, device=weight.device)))] if kept else []
        experts = self.experts(layer)
        by_expert: dict[int, list[int]] = {}
        for n in neurons:
            if n < self.routed_width + self.shared_width:
                by_expert.setdefault(min(n // self.expert_width, self.n_experts), []).append(n)
        slices = []
        for e, ns in sorted(by_expert.items()):
            if e == self.n_experts:
                weight = self.shared_mlp(layer).down_proj.weight
                index = torch.tensor([n - self.routed_width for n in ns], device=weight.device)
                slices.append((weight, (slice(None), index)))
            else:
                index = torch.tensor([n % self.expert_width for n in ns], device=experts.down_proj.device)
                slices.append((experts.down_proj, expert_down_index(experts, e, index)))
        return slices

    def locate_ffn(self, unit: int) -> tuple[int, int]:
        """``(expert, neuron)``; the shared expert is expert ``n_experts``."""
        if unit >= self.routed_width:
            return self.n_experts, unit - self.routed_width
        return divmod(unit, self.expert_width)


def softmax_gates(router_weight: Tensor, x_hat: Tensor, routing: Tensor, renormalise: bool) -> Tensor:
    """Softmax over all experts' logits in float32, taken at ``routing``, renormalised over the top-k if asked.

    Args:
        router_weight: ``[E, d]`` the router's weight.
        x_hat: ``[batch, d]`` float32.
        routing: ``[batch, top_k]`` chosen experts.
        renormalise: Divide by the chosen experts' sum (``norm_topk_prob``; Mixtral always).

    Returns:
        ``[batch, top_k]`` float32.
    """
    probs = torch.softmax(x_hat @ router_weight.to(x_hat).T, dim=-1)  # [batch, E]
    gates = probs.gather(1, routing)
    return gates / gates.sum(-1, keepdim=True) if renormalise else gates
