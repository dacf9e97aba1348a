"""OLMo v1 (``model_type="olmo"``): Llama's layout with a parameter-free LayerNorm."""

from __future__ import annotations

from gated_lpi_exp.adapters.base import NormSpec
from gated_lpi_exp.adapters.llama import LlamaAdapter

# OlmoLayerNorm hard-codes eps=1e-5 in its forward and stores no attribute for it.
_OLMO_LAYERNORM_EPS = 1e-5


class OlmoAdapter(LlamaAdapter):
    """Adapter for ``OlmoForCausalLM``; FFN neuron ``j`` is column ``j`` of ``down_proj``."""

    model_types = ("olmo",)

    def final_norm_spec(self) -> NormSpec:
        """LayerNorm without γ or β (``F.layer_norm(..., None, None, eps=1e-5)`` in float32)."""
        norm = self.final_norm()
        weight = getattr(norm, "weight", None)
        bias = getattr(norm, "bias", None)
        eps = getattr(norm, "eps", _OLMO_LAYERNORM_EPS)
        return NormSpec(kind="layer", weight=weight, bias=bias, eps=float(eps))
