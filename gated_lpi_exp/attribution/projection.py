"""φ(u) = W_U · final_norm(u) in its frozen or exact form, and the per-chunk scoring kernel.

Both norm kinds are ``γ ⊙ center(u) / s + β`` with ``s = sqrt(mean(center(u)²) + ε)``, so for
``u = base + coef · col``:

    φ(u) = (Q + coef · P) · inv + W_U β,   Q = W_U (γ ⊙ center(base)),   P = W_U (γ ⊙ center(col))

``P`` depends on the weight column only, never on the prompt: it is computed once per chunk of neurons and
shared across the batch. ``inv`` is ``1 / s(h_L)`` (frozen) or ``1 / s(base + coef · col)`` (exact), whose
mean square expands in closed form into ``|b̃|²``, ``b̃·c̃`` and ``|c̃|²`` (``~`` = centered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gated_lpi_exp.adapters import ModelAdapter
from gated_lpi_exp.errors import AttributionError

NORM_MODES = ("frozen", "exact")
# [rows, chunk, V] float32 tensors alive at once in chunk_scores: the logits, logsumexp's shifted exp, and
# the projection (at most as large). The chunk is sized so that all three fit the budget.
WORKING_COPIES = 3


def chunk_size(memory_budget_mb: float, rows: int, vocab: int) -> int:
    """Neurons per chunk so that ``WORKING_COPIES * rows * chunk * vocab * 4`` bytes fit the budget (≥ 1).

    Args:
        memory_budget_mb: Budget for the chunk's working tensors, in MiB.
        rows: Batch rows scored together.
        vocab: Vocabulary size.

    Returns:
        The chunk size (at least 1, even when one neuron alone exceeds the budget).
    """
    per_neuron = WORKING_COPIES * max(rows, 1) * vocab * 4
    return max(1, int(memory_budget_mb * 2**20) // per_neuron)


def chunk_scores(
    q: Tensor, coef: Tensor, proj: Tensor, inv: Tensor, bias: Tensor | None, target: Tensor, base_lp: Tensor
) -> Tensor:
    """``I = log p(w | base + coef·col) − log p(w | base)`` for one chunk (the hot kernel; keep it small).

    Args:
        q: ``[rows, V]`` ``W_U(γ ⊙ center(base))``.
        coef: ``[rows, n]`` contribution coefficients.
        proj: ``[n, V]`` shared column projections, or ``[rows, n, V]`` per-example ones.
        inv: ``[rows, n]`` inverse norm scale of each perturbed state.
        bias: ``[V]`` ``W_U β`` or None.
        target: ``[rows]`` target token ids.
        base_lp: ``[rows]`` ``log p(w | base)``.

    Returns:
        ``[rows, n]`` scores.
    """
    logits = torch.addcmul(q[:, None, :], coef[:, :, None], proj)  # [rows, n, V]
    logits.mul_(inv[:, :, None])
    if bias is not None:
        logits.add_(bias)
    index = target[:, None, None].expand(-1, logits.shape[1], 1)  # [rows, n, 1]
    target_logit = logits.gather(2, index).squeeze(2)  # [rows, n]
    return target_logit - torch.logsumexp(logits, dim=2) - base_lp[:, None]


@dataclass
class BaseState:
    """A batch of base residual states projected once."""

    centered: Tensor  # [batch, d] center(base)
    q: Tensor  # [batch, V]
    sq_norm: Tensor  # [batch] |center(base)|²
    inv: Tensor  # [batch] inverse scale of the base itself (frozen: of h_L)
    logprob: Tensor  # [batch] log p(w | base)


class Projection:
    """The final norm + unembedding of one model, frozen at ``h_final`` or exact.

    Holds one float32 copy of ``W_U ⊙ γ`` (``[V, d]``, the only weight upcast whole) for the call's duration.
    """

    def __init__(self, adapter: ModelAdapter, h_final: Tensor, target: Tensor, norm: str = "frozen") -> None:
        if norm not in NORM_MODES:
            raise AttributionError(f"norm must be one of {NORM_MODES}, got {norm!r}")
        self.spec = adapter.final_norm_spec()
        self.mode = norm
        self.target = target  # [batch]
        device = h_final.device
        weight = adapter.unembedding().weight
        w_u = weight.to(device, torch.float32)  # [V, d]; the parameter itself when already float32
        bias, gain = self.spec.bias, self.spec.weight
        self.bias = w_u @ bias.to(device, torch.float32) if bias is not None else None  # [V] W_U β
        if gain is not None:
            gain = gain.to(device, torch.float32)
            # Scale in place when .to() made a copy, so only one [V, d] float32 matrix is ever held.
            w_u = w_u * gain if w_u.data_ptr() == weight.data_ptr() else w_u.mul_(gain)
        self.w_u = w_u  # [V, d] W_U ⊙ γ
        self.d = h_final.shape[-1]
        self.frozen_inv = self.spec.inv_scale(h_final)  # [batch]

    def logits(self, u: Tensor) -> Tensor:
        """``φ(u)`` for ``u [..., d]`` (frozen: ``u``'s batch must match ``h_final``'s), ``[..., V]``."""
        inv = self.frozen_inv if self.mode == "frozen" else self.spec.inv_scale(u)
        out = (self.spec.center(u) @ self.w_u.T) * inv[..., None]
        return out + self.bias if self.bias is not None else out

    def base(self, base: Tensor) -> BaseState:
        """Project the base states ``[batch, d]`` once."""
        centered = self.spec.center(base)  # [batch, d]
        q = centered @ self.w_u.T  # [batch, V]
        sq_norm = centered.pow(2).sum(-1)  # [batch]
        inv = self.frozen_inv if self.mode == "frozen" else torch.rsqrt(sq_norm / self.d + self.spec.eps)
        logits = q * inv[:, None] if self.bias is None else q * inv[:, None] + self.bias
        logprob = logits.gather(1, self.target[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
        return BaseState(centered=centered, q=q, sq_norm=sq_norm, inv=inv, logprob=logprob)

    def columns(self, cols: Tensor) -> tuple[Tensor, Tensor]:
        """Shared projections of weight columns ``[d, n]`` (any dtype): ``(P [n, V], c̃ [d, n])``."""
        centered = self.spec.center(cols.to(self.w_u.device, torch.float32), dim=0)  # [d, n]
        return centered.T @ self.w_u.T, centered

    def neuron_inv(self, base: BaseState, rows: Tensor | None, coef: Tensor, centered: Tensor) -> Tensor:
        """Inverse scale of ``base + coef · col`` for each row and neuron, ``[rows, n]``."""
        inv = base.inv if rows is None else base.inv[rows]
        if self.mode == "frozen":
            return inv[:, None].expand_as(coef)
        b = base.centered if rows is None else base.centered[rows]  # [rows, d]
        sq = base.sq_norm if rows is None else base.sq_norm[rows]  # [rows]
        cross = b @ centered  # [rows, n]
        col_sq = centered.pow(2).sum(0)  # [n]
        # |b̃ + c c̃|² expanded; clamp guards the rare cancellation when c·c̃ ≈ −b̃.
        mean_sq = (sq[:, None] + 2 * coef * cross + coef.pow(2) * col_sq).clamp(min=0) / self.d
        return torch.rsqrt(mean_sq + self.spec.eps)

    def vectors(self, base: BaseState, vecs: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example contributions ``vecs [batch, k, d]``: ``(P [batch, k, V], inv [batch, k])``."""
        centered = self.spec.center(vecs)  # [batch, k, d]
        proj = centered @ self.w_u.T  # [batch, k, V]
        if self.mode == "frozen":
            return proj, base.inv[:, None].expand(vecs.shape[:2])
        return proj, self.spec.inv_scale(base.centered[:, None, :] + centered)
