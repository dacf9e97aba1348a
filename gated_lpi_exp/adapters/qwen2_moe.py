"""Qwen2-MoE (``qwen2_moe``): softmax top-k routed experts plus one sigmoid-gated shared expert.

The block returns ``Σ_e g_e · E_e(x̂) + σ(w_s · x̂) · S(x̂)`` (``Qwen2MoeSparseMoeBlock``): shared-expert
neuron ``j`` (index ``n_experts * expert_width + j``) has coefficient ``σ(w_s · x̂) · m_j``, and is scored for
every example (it is always active).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gated_lpi_exp.adapters.moe import MoEAdapter, softmax_gates


class Qwen2MoeAdapter(MoEAdapter):
    """``g_e`` = float32 softmax at the chosen experts, renormalised when ``norm_topk_prob``."""

    model_types = ("qwen2_moe",)
    SITES = {**MoEAdapter.SITES, "shared_expert_gate": "model.layers.{layer}.mlp.shared_expert_gate"}
    SHARED = "shared_expert"

    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """Softmax weights of the chosen experts (``[batch, top_k]``)."""
        router = self.router(layer)
        return softmax_gates(router.weight, x_hat, routing, bool(router.norm_topk_prob))

    def shared_gate(self, layer: int, x_hat: Tensor) -> Tensor:
        """``σ(w_s · x̂)`` per example (``[batch]``)."""
        weight = self.module("shared_expert_gate", layer).weight.to(x_hat)  # [1, d]
        return torch.sigmoid(x_hat @ weight.T)[:, 0]
