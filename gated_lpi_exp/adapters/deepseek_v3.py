"""DeepSeek-V3 (``deepseek_v3``): sigmoid routing with routed scaling, ungated shared experts, MLA attention.

``DeepseekV3TopkRouter`` picks experts by ``σ(logits) + e_score_correction_bias`` within the best groups, but
weights them by ``σ(logits)`` alone, divided by their sum (+1e-20) when ``norm_topk_prob``, times
``routed_scaling_factor``. Those weights are the coefficients here; the choice is the model's own. The
``n_shared_experts`` shared experts are one MLP added unweighted. The first ``first_k_dense_replace`` layers are
dense (padded, see ``moe.py``). Multi-head latent attention writes ``num_heads`` slices of ``v_head_dim``
through ``o_proj``, so a head's neurons are ``v_head_dim`` wide.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gated_lpi_exp.adapters.moe import MoEAdapter


class DeepseekV3Adapter(MoEAdapter):
    """Expert ``e``'s coefficient is ``scale · σ(l_e) / Σ_{chosen} σ(l)`` (without the division when
    ``norm_topk_prob`` is False)."""

    model_types = ("deepseek_v3",)
    SHARED = "shared_experts"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.head_dim = model.config.v_head_dim

    def gates(self, layer: int, x_hat: Tensor, routing: Tensor) -> Tensor:
        """Scaled (and normalised) sigmoid scores of the chosen experts (``[batch, top_k]``)."""
        router = self.router(layer)
        scores = torch.sigmoid(x_hat @ router.weight.to(x_hat).T).gather(1, routing)  # [batch, top_k]
        if router.norm_topk_prob:
            scores = scores / (scores.sum(-1, keepdim=True) + 1e-20)
        return scores * router.routed_scaling_factor
