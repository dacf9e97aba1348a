"""OLMo-2 and OLMo-3 (``olmo2``, ``olmo3``): post-sublayer RMSNorms, SwiGLU FFN, RMSNorm final norm.

A layer computes ``r_mid = r_in + N_a(o_proj(z))`` and ``r_out = r_mid + N_f(mlp(r_mid))``: the norms sit on
the sublayer outputs, and the MLP reads the residual itself (no pre-norm). Each post-norm is frozen at its
scale on the whole sublayer output, so the units of a sublayer sum to what it adds to the residual. The q/k
norms act before ``z`` and do not enter. OLMo-3's sliding-window layers change only the attention pattern.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from gated_lpi_exp.adapters.base import ModelAdapter, NormSpec, Read, rms_spec
from gated_lpi_exp.adapters.llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    """FFN neuron ``j`` writes ``γ_f ⊙ (m_j W_down[:, j]) / s_f``, ``s_f`` the post-norm scale of ``mlp(r_mid)``."""

    model_types = ("olmo2", "olmo3")
    SITES = {
        **{k: v for k, v in LlamaAdapter.SITES.items() if k != "ffn_norm"},
        "attn_post_norm": "model.layers.{layer}.post_attention_layernorm",
        "ffn_post_norm": "model.layers.{layer}.post_feedforward_layernorm",
    }
    READS: ClassVar[dict[str, Read | None]] = {
        **ModelAdapter.READS,
        "a_raw": ("o_proj", "output"),
        "a": ("attn_post_norm", "output"),
        "r_mid": ("mlp", "input"),
        "x_hat": ("mlp", "input"),
        "f_raw": ("mlp", "output"),
        "f": ("ffn_post_norm", "output"),
    }

    def post_norm_spec(self, layer: int, sublayer: Literal["attn", "ffn"]) -> NormSpec | None:
        """The RMSNorm on the attention or FFN output."""
        return rms_spec(self.module(f"{sublayer}_post_norm", layer))
