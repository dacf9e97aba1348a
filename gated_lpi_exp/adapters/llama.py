"""Llama-style dense models (``llama``, ``mistral``, ``qwen2``, ``qwen3``): RMSNorm with gain, SwiGLU FFN.

They differ only where attribution does not look (q/k/v biases in Qwen2, q/k norms in Qwen3, sliding windows
in Mistral: all before ``z``), so one adapter serves them. Heads are query heads under grouped-query attention.
"""

from __future__ import annotations

from torch import Tensor

from gated_lpi_exp.adapters.base import (
    FFNNeurons,
    ModelAdapter,
    NeuronGroup,
    NormSpec,
    WeightSlice,
    column_slices,
    rms_spec,
)
from gated_lpi_exp.adapters.mlp import gated_mlp_activations


class LlamaAdapter(ModelAdapter):
    """FFN neuron ``j`` is column ``j`` of ``down_proj``; ``m_j = act(W_gate[j]·x̂) · (W_up[j]·x̂)``."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")
    SITES = {**ModelAdapter.SITES, "down_proj": "model.layers.{layer}.mlp.down_proj"}

    def final_norm_spec(self) -> NormSpec:
        """RMSNorm with gain γ and no bias."""
        return rms_spec(self.final_norm())

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """``coef[b, j] = m_j``, one group over all rows."""
        coef = gated_mlp_activations(self.mlp(layer), x_hat)  # [batch, d_ff]
        return FFNNeurons(coef=coef, groups=[NeuronGroup(start=0, columns=self.down_proj(layer))])

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Columns of ``down_proj.weight``."""
        return column_slices(self.down_proj(layer), neurons)

    def down_proj(self, layer: int) -> Tensor:
        """``W_down [d, d_ff]``."""
        return self.module("down_proj", layer).weight
