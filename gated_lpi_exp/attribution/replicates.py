"""Bootstrap replicates of the mean attribution scores, accumulated in the same pass as the scores.

Replicate ``r`` of a unit's mean score is ``Σ_i w_ri I_i(v) / Σ_i w_ri`` with the Poisson(1) example
weights of :mod:`gated_lpi_exp.metrics.bootstrap`. Each batch adds ``weights[:, batch] @ scores[batch]`` to
an ``[R, units]`` float64 sum, so memory is ``R x units`` whatever the number of examples, and per-example
scores are never kept. Only the kinds the dynamics metrics read have replicates: FFN and ATTN neurons
(J_stab, R_t) and the two layer profiles (ρ_avg, σ_rel); heads are ranked, never resampled.

Cost: one ``[R, batch] x [batch, units]`` product per batch and kind (small next to attribution itself);
memory and storage ``R x (FFN + ATTN neurons + 2 x layers)`` numbers per checkpoint (float32 once stored:
200 replicates of 10,240 + 1,024 neurons are 9 MB; of OLMoE's 1,048,576 + 32,768 neurons, 865 MB).
"""

from __future__ import annotations

import numpy as np
import torch

REPLICATE_KINDS = ("ffn", "attn", "ffn_layer", "attn_layer")
"""Score kinds with bootstrap replicates (see :class:`gated_lpi_exp.attribution.Attribution`)."""


class ReplicateAccumulator:
    """Weighted sums of every replicate over the batches of one pass, in example order.

    Args:
        weights: Bootstrap weights of the pass's examples, in the order batches deliver them # [R, n]
    """

    def __init__(self, weights: np.ndarray):
        self.weights = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64))  # [R, n]
        self.sums: dict[str, torch.Tensor] = {}  # kind -> [R, units] float64
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.seen = 0

    def add(self, scores: dict[str, torch.Tensor]) -> None:
        """Add the next batch: ``kind -> [batch, ...]`` scores of the next ``batch`` examples."""
        batch = next(iter(scores.values())).shape[0]
        w = self.weights[:, self.seen : self.seen + batch]  # [R, batch]
        if w.shape[1] != batch:
            raise ValueError(
                f"the pass has {self.weights.shape[1]} examples; batch overruns it at {self.seen}"
            )
        for kind in REPLICATE_KINDS:
            flat = scores[kind].detach().cpu().double().reshape(batch, -1)  # [batch, units]
            self.shapes[kind] = tuple(scores[kind].shape[1:])
            part = w @ flat  # [R, units]
            self.sums[kind] = part if kind not in self.sums else self.sums[kind] + part
        self.seen += batch

    def means(self) -> dict[str, np.ndarray]:
        """``kind -> [R, ...]`` float32 replicate means (NaN in a replicate whose weights sum to 0)."""
        if self.seen != self.weights.shape[1]:
            raise ValueError(f"only {self.seen} of {self.weights.shape[1]} examples were added")
        total = self.weights.sum(dim=1, keepdim=True)  # [R, 1]
        out = {}
        for kind, sums in self.sums.items():
            means = torch.where(total > 0, sums / total.clamp(min=1e-300), torch.nan)
            out[kind] = means.reshape(-1, *self.shapes[kind]).float().numpy()
        return out
