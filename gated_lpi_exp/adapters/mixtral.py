"""Mixtral (``mixtral``): softmax top-k routing, always renormalised over the chosen experts."""

from __future__ import annotations

from torch import Tensor

from gated_lpi_exp.adapters.moe import MoEAdapter, softmax_gates


class MixtralAdapter(MoEAdapter):
    """``g_e = softmax(logits)_e / Σ_{top-k} softmax(logits)`` (``MixtralTopKRouter`` always renormalises)."""

    model_types = ("mixtral",)

    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """Renormalised softmax weights of the chosen experts (``[batch, top_k]``)."""
        return softmax_gates(self.router(layer).weight, x_hat, routing, renormalise=True)
