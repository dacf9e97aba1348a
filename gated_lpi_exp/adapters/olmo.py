"""OLMo v1 (``model_type="olmo"``): parameter-free LayerNorm, dense SwiGLU FFN."""

from __future__ import annotations

import torch
from torch import Tensor

from gated_lpi_exp.adapters.base import FFNNeurons, ModelAdapter, NeuronGroup, NormSpec, WeightSlice

# OlmoLayerNorm hard-codes eps=1e-5 in its forward and stores no attribute for it.
_OLMO_LAYERNORM_EPS = 1e-5


class OlmoAdapter(ModelAdapter):
    """Adapter for ``OlmoForCausalLM``; FFN neuron ``j`` is column ``j`` of ``down_proj``."""

    family = "olmo"
    is_moe = False
    SITES = {
        **ModelAdapter.SITES,
        "gate_proj": "model.layers.{layer}.mlp.gate_proj",
        "up_proj": "model.layers.{layer}.mlp.up_proj",
        "down_proj": "model.layers.{layer}.mlp.down_proj",
    }

    def final_norm_spec(self) -> NormSpec:
        """LayerNorm without γ or β (``F.layer_norm(..., None, None, eps=1e-5)`` in float32)."""
        norm = self.final_norm()
        weight = getattr(norm, "weight", None)
        bias = getattr(norm, "bias", None)
        eps = getattr(norm, "eps", _OLMO_LAYERNORM_EPS)
        return NormSpec(kind="layer", weight=weight, bias=bias, eps=float(eps))

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """``coef[b, j] = m_j = act(W_gate[j]·x̂) * (W_up[j]·x̂)``, one group over all rows."""
        gate_w = self.module("gate_proj", layer).weight.to(x_hat)  # [d_ff, d]
        up_w = self.module("up_proj", layer).weight.to(x_hat)  # [d_ff, d]
        coef = self.mlp(layer).act_fn(x_hat @ gate_w.T) * (x_hat @ up_w.T)  # [batch, d_ff]
        down = self.module("down_proj", layer).weight  # [d, d_ff]
        return FFNNeurons(coef=coef, groups=[NeuronGroup(start=0, columns=down)])

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Columns of ``down_proj.weight``."""
        weight = self.module("down_proj", layer).weight
        index = torch.tensor(neurons, dtype=torch.long, device=weight.device)
        return [(weight, (slice(None), index))]
