"""GPT-NeoX / Pythia (``gpt_neox``): LayerNorms with γ and β, biased projections, parallel residual.

With ``use_parallel_residual`` a layer computes ``r_out = r_in + attn(LN_1(r_in)) + mlp(LN_2(r_in))``: the MLP
reads ``r_in``, not ``r_in + a``. The FFN units' base is still ``r_in + a`` (the attention output as added to
the residual), as for sequential blocks, so ``r_mid`` is computed rather than read. The output-projection
biases (``attention.dense.bias``, ``mlp.dense_4h_to_h.bias``) are no units: they stay in the layer units.
The final LayerNorm's β stays in φ.
"""

from __future__ import annotations

from torch import Tensor, nn

from gated_lpi_exp.adapters.base import (
    FFNNeurons,
    ModelAdapter,
    NeuronGroup,
    NormSpec,
    WeightSlice,
    column_slices,
)
from gated_lpi_exp.adapters.mlp import plain_mlp_activations


class GPTNeoXAdapter(ModelAdapter):
    """FFN neuron ``j`` is column ``j`` of ``dense_4h_to_h``; ``m_j = act(W_in[j]·x̂ + b_in[j])``."""

    model_types = ("gpt_neox",)
    SITES = {
        "backbone": "gpt_neox",
        "layer": "gpt_neox.layers.{layer}",
        "o_proj": "gpt_neox.layers.{layer}.attention.dense",
        "ffn_norm": "gpt_neox.layers.{layer}.post_attention_layernorm",
        "mlp": "gpt_neox.layers.{layer}.mlp",
        "up_proj": "gpt_neox.layers.{layer}.mlp.dense_h_to_4h",
        "down_proj": "gpt_neox.layers.{layer}.mlp.dense_4h_to_h",
        "final_norm": "gpt_neox.final_layer_norm",
        "unembedding": "lm_head",
    }

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.parallel_residual = bool(model.config.use_parallel_residual)
        if self.parallel_residual:
            self.reads["r_mid"] = None  # r_in + a exists nowhere in a parallel block

    def final_norm_spec(self) -> NormSpec:
        """``nn.LayerNorm`` with γ and β."""
        norm = self.final_norm()
        return NormSpec(kind="layer", weight=norm.weight, bias=norm.bias, eps=float(norm.eps))

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """``coef[b, j] = m_j``, one group over all rows."""
        coef = plain_mlp_activations(self.module("up_proj", layer), self.mlp(layer).act, x_hat)
        down = self.module("down_proj", layer).weight  # [d, d_ff]
        return FFNNeurons(coef=coef, groups=[NeuronGroup(start=0, columns=down)])

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Columns of ``dense_4h_to_h.weight`` (its bias is left alone)."""
        return column_slices(self.module("down_proj", layer).weight, neurons)
