"""OLMoE (``olmoe``): RMSNorm with gain, softmax top-k routing over fused experts, no shared expert."""

from __future__ import annotations

from torch import Tensor

from gated_lpi_exp.adapters.moe import MoEAdapter, softmax_gates


class OlmoeAdapter(MoEAdapter):
    """``g_e`` = float32 softmax over all router logits at the chosen experts, renormalised only when the
    router's ``norm_topk_prob`` says so (False for OLMoE-1B-7B)."""

    model_types = ("olmoe",)

    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """Softmax weights of the chosen experts (``[batch, top_k]``)."""
        router = self.router(layer)
        return softmax_gates(router.weight, x_hat, routing, bool(router.norm_topk_prob))
