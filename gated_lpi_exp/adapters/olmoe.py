"""OLMoE (``model_type="olmoe"``): RMSNorm with gain, top-k routed experts with fused weights.

transformers >= 5 stores the experts fused (``gate_up_proj [E, 2*d_e, d]``, gate half first;
``down_proj [E, d, d_e]``; both transposed when ``is_transposed``) and the default ``grouped_mm`` backend has
no per-expert module to hook, so ``m`` is recomputed here from ``x̂`` and the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gated_lpi_exp.adapters.base import FFNNeurons, ModelAdapter, NeuronGroup, NormSpec, WeightSlice
from gated_lpi_exp.errors import AttributionError


class OlmoeAdapter(ModelAdapter):
    """Adapter for ``OlmoeForCausalLM``; expert neuron ``(e, j)`` has index ``e * d_expert + j``."""

    family = "olmoe"
    is_moe = True
    SITES = {
        **ModelAdapter.SITES,
        "router": "model.layers.{layer}.mlp.gate",
        "experts": "model.layers.{layer}.mlp.experts",
    }

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        router = self.router(0)
        self.n_experts = router.weight.shape[0]
        self.top_k = router.top_k
        self.norm_topk_prob = bool(router.norm_topk_prob)
        self.expert_width = self.experts(0).intermediate_dim
        for layer in range(self.n_layers):
            self._check_experts(self.experts(layer))

    def router(self, layer: int) -> nn.Module:
        """``OlmoeTopKRouter``: ``weight [E, d]``, forward -> (logits, top_k_weights, top_k_index)."""
        return self.module("router", layer)

    def experts(self, layer: int) -> nn.Module:
        """Fused ``OlmoeExperts`` (``gate_up_proj``, ``down_proj``, ``act_fn``)."""
        return self.module("experts", layer)

    def final_norm_spec(self) -> NormSpec:
        """RMSNorm with gain γ and no bias."""
        norm = self.final_norm()
        return NormSpec(kind="rms", weight=norm.weight, bias=None, eps=float(norm.variance_epsilon))

    def read_routing(self, router_output: object) -> Tensor:
        """The router returns ``(logits, top_k_weights, top_k_index)``; index is ``[tokens, top_k]``."""
        return router_output[2]

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """``coef[b, e*d_e + j] = g_e * m_{e,j}`` for routed experts, exactly 0 elsewhere.

        ``g`` is the float32 softmax over all experts' router logits, taken at the chosen experts and
        renormalised only when ``norm_topk_prob``. The choice itself is the model's own (``routing``) so the
        neurons sum to the block output the model computed, even where a bf16 near-tie could flip a recompute.
        """
        batch, width = x_hat.shape[0], self.expert_width
        router, experts = self.router(layer), self.experts(layer)
        logits = x_hat @ router.weight.to(x_hat).T  # [batch, experts]
        probs = torch.softmax(logits, dim=-1)
        if routing is None:
            routing = probs.topk(self.top_k, dim=-1).indices  # [batch, top_k]
        routing = routing.to(x_hat.device)
        gates = probs.gather(1, routing)  # [batch, top_k]
        if self.norm_topk_prob:
            gates = gates / gates.sum(-1, keepdim=True)
        coef = x_hat.new_zeros(batch, self.n_experts, width)  # [batch, experts, d_e]
        routed = torch.zeros(batch, self.n_experts, dtype=torch.bool, device=x_hat.device)
        routed[torch.arange(batch, device=x_hat.device)[:, None], routing] = True
        groups = []
        for e in routing.unique().tolist():
            rows, slot = (routing == e).nonzero(as_tuple=True)
            gate_up = self._gate_up(experts, e).to(x_hat)  # [2*d_e, d]
            gate, up = (x_hat[rows] @ gate_up.T).chunk(2, dim=-1)  # [rows, d_e] each
            m = experts.act_fn(gate) * up
            coef[rows, e] = gates[rows, slot, None] * m
            groups.append(NeuronGroup(start=e * width, columns=self._down(experts, e), rows=rows))
        return FFNNeurons(coef=coef.reshape(batch, -1), groups=groups, routed=routed)

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Column ``j`` of expert ``e``'s down projection for each neuron ``e * d_e + j``."""
        experts = self.experts(layer)
        by_expert: dict[int, list[int]] = {}
        for n in neurons:
            by_expert.setdefault(n // self.expert_width, []).append(n % self.expert_width)
        slices = []
        for e, js in sorted(by_expert.items()):
            index = torch.tensor(js, dtype=torch.long, device=experts.down_proj.device)
            where = (e, index, slice(None)) if experts.is_transposed else (e, slice(None), index)
            slices.append((experts.down_proj, where))
        return slices

    @staticmethod
    def _gate_up(experts: nn.Module, e: int) -> Tensor:
        """Expert ``e``'s fused gate/up weight as ``[2*d_e, d]`` (gate rows first)."""
        weight = experts.gate_up_proj[e]
        return weight.T if experts.is_transposed else weight

    @staticmethod
    def _down(experts: nn.Module, e: int) -> Tensor:
        """Expert ``e``'s down projection as ``[d, d_e]`` (a view)."""
        weight = experts.down_proj[e]
        return weight.T if experts.is_transposed else weight

    @staticmethod
    def _check_experts(experts: nn.Module) -> None:
        layout = {
            "is_concatenated": getattr(experts, "is_concatenated", None),
            "is_transposed": getattr(experts, "is_transposed", None),
            "has_gate": getattr(experts, "has_gate", True),
            "has_bias": getattr(experts, "has_bias", False),
            "has_post_expert_norm": getattr(experts, "has_post_expert_norm", False),
        }
        known = layout["is_concatenated"] is True and layout["is_transposed"] in (True, False)
        if not (
            known and layout["has_gate"] and not layout["has_bias"] and not layout["has_post_expert_norm"]
        ):
            raise AttributionError(
                f"unsupported OLMoE experts layout {layout}; expected fused, concatenated [gate; up] weights "
                "without bias or post-expert norm (transformers >= 5 default)"
            )
        if not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
            raise AttributionError("OLMoE experts have no fused gate_up_proj/down_proj (transformers < 5?)")
