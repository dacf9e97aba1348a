"""Qwen3-MoE (``qwen3_moe``): softmax top-k routing, renormalised over the top-k (``norm_topk_prob``)."""

from __future__ import annotations

from torch import Tensor

from gated_lpi_exp.adapters.moe import MoEAdapter, softmax_gates


class Qwen3MoeAdapter(MoEAdapter):
    """``g_e`` = float32 softmax at the chosen experts, divided by their sum when ``norm_topk_prob``
    (True in every released Qwen3-MoE). Dense ``mlp_only_layers`` are scored as dense layers."""

    model_types = ("qwen3_moe",)

    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """Softmax weights of the chosen experts (``[batch, top_k]``)."""
        router = self.router(layer)
        return softmax_gates(router.weight, x_hat, routing, bool(router.norm_topk_prob))
