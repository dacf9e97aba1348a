"""The scores one ``gated_lpi`` call returns."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class Attribution:
    """Gated-LPI scores ``I(v) = log p(w | base + c_v) − log p(w | base)`` per example, float32.

    FFN index is ``e * d_expert + j`` for MoE (dense: ``j``); attention index is ``h * head_dim + k``.
    """

    ffn: Tensor  # [batch, layers, ffn_neurons]; exactly 0 for experts not routed at T
    attn: Tensor  # [batch, layers, heads*head_dim]
    heads: Tensor  # [batch, layers, heads]
    ffn_layer: Tensor  # [batch, layers]
    attn_layer: Tensor  # [batch, layers]
    target_ids: Tensor  # [batch] long
    base_logprob: Tensor  # [batch] log p(w | h_L) under φ (equals the model's own under both norms)
    norm: str = "frozen"
    routed: Tensor | None = None  # [batch, layers, experts] bool, MoE only
    attn_positions: Tensor | None = None
    """``[batch, layers, seq, heads*head_dim]`` attention neurons per source position (``attn_positions=True``):
    position 0 is the prompt's first real token; exactly 0 past ``prompt_lengths``."""
    prompt_lengths: Tensor | None = None  # [batch] long, with attn_positions

    def to_cpu(self) -> Attribution:
        """A copy with every tensor moved to the CPU."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Attribution(**{k: v.cpu() if isinstance(v, Tensor) else v for k, v in values.items()})

    @property
    def batch_size(self) -> int:
        """Number of examples."""
        return self.ffn.shape[0]
