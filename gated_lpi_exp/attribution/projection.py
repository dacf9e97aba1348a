"""φ(u) = W_U · final_norm(u) in its frozen or exact form, and the per-chunk scoring kernel.

Both norm kinds are ``γ ⊙ center(u) / s + β`` with ``s = sqrt(mean(center(u)²) + ε)``, so for
``u = base + coef · col``:

    φ(u) = (Q + coef · P) · inv + W_U β,   Q = W_U (γ ⊙ center(base)),   P = W_U (γ ⊙ center(col))

``P`` depends on the weight column only, never on the prompt: it is computed once per chunk of neurons and
shared across the batch. ``inv`` is ``1 / s(h_L)`` (frozen) or ``1 / s(base + coef · col)`` (exact), whose
mean square expands in closed form into ``|b̃|²``, ``b̃·c̃`` and ``|c̃|²`` (``~`` = centered).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from gated_lpi_exp.adapters import ModelAdapter, NormSpec
from gated_lpi_exp.attribution import kernels
from gated_lpi_exp.errors import AttributionError

NORM_MODES = ("frozen", "exact")
# [rows, chunk, V] float32 tensors alive at once in the eager kernel: the logits, logsumexp's shifted exp, and
# the projection (at most as large). The eager chunk is sized so that all three fit the budget.
WORKING_COPIES = 3
# Fused kernels keep only the shared projection [chunk, V]; this share of the budget goes to it, the rest to
# the small per-chunk tensors, the matmul's packing buffers and the recomputation of underflowed pairs.
FUSED_SHARE = 0.85
# A fused sum below this means the shift bound was so loose that the terms underflowed (a gap of ~46 nats):
# such pairs are recomputed with an exact max. Terms clamped at exp(-87.3) add at most V·1e-38 to a sum.
UNDERFLOW = 1e-20


def chunk_size(memory_budget_mb: float, rows: int, vocab: int) -> int:
    """Neurons per eager chunk so that ``WORKING_COPIES * rows * chunk * vocab * 4`` bytes fit (≥ 1).

    Args:
        memory_budget_mb: Budget for the chunk's working tensors, in MiB.
        rows: Batch rows scored together.
        vocab: Vocabulary size.

    Returns:
        The chunk size (at least 1, even when one neuron alone exceeds the budget).
    """
    per_neuron = WORKING_COPIES * max(rows, 1) * vocab * 4
    return max(1, int(memory_budget_mb * 2**20) // per_neuron)


def fused_chunk_size(memory_budget_mb: float, vocab: int) -> int:
    """Neurons per fused chunk: the shared projection ``[chunk, V]`` float32 in ``FUSED_SHARE`` of the budget.

    A fused kernel never holds ``[rows, chunk, V]``, so the chunk does not shrink with the batch and the
    projection matmul keeps a large, efficient M dimension (a whole 1024-neuron expert at 512 MiB).
    """
    return max(1, int(memory_budget_mb * 2**20 * FUSED_SHARE) // (vocab * 4))


def chunk_scores(
    q: Tensor,
    coef: Tensor,
    proj: Tensor,
    inv: Tensor,
    bias: Tensor | None,
    target: Tensor,
    base_lp: Tensor,
    kernel: str = "eager",
) -> Tensor:
    """``I = log p(w | base + coef·col) − log p(w | base)`` for one chunk (the hot kernel).

    Args:
        q: ``[rows, V]`` ``W_U(γ ⊙ center(base))``.
        coef: ``[rows, n]`` contribution coefficients.
        proj: ``[n, V]`` shared column projections, or ``[rows, n, V]`` per-example ones (always eager).
        inv: ``[rows, n]`` inverse norm scale of each perturbed state.
        bias: ``[V]`` ``W_U β`` or None.
        target: ``[rows]`` target token ids.
        base_lp: ``[rows]`` ``log p(w | base)``.
        kernel: ``eager`` (materialise ``[rows, n, V]`` logits), or a fused backend of ``kernels.py``
            (``native``, ``compiled``) that holds nothing larger than ``proj``.

    Returns:
        ``[rows, n]`` scores.
    """
    if kernel == "eager" or proj.dim() == 3:
        return _eager_scores(q, coef, proj, inv, bias, target, base_lp)
    # logits[r, n, v] = a·q[r, v] + c·P[n, v] + β[v] with a = inv, c = inv·coef (inv > 0).
    a, c = inv, inv * coef  # [rows, n]
    # Upper bound of max_v logits: every exp term is ≤ 1, so one pass needs no running max.
    shift = a * q.amax(1)[:, None] + torch.maximum(c * proj.amax(1), c * proj.amin(1))  # [rows, n]
    if bias is not None:
        shift = shift + bias.max()
    sums = kernels.expsum(q, proj, a, c, shift, bias, kernel)  # [rows, n]
    lse = shift + sums.log()
    bad = ~(sums > UNDERFLOW)  # underflow, or NaN from non-finite inputs
    if bool(bad.any()):
        lse[bad] = _exact_lse(q, proj, a, c, bias, bad)
    target_logit = a * q.gather(1, target[:, None]) + c * proj[:, target].T  # [rows, n]
    if bias is not None:
        target_logit = target_logit + bias[target][:, None]
    return target_logit - lse - base_lp[:, None]


def _eager_scores(
    q: Tensor, coef: Tensor, proj: Tensor, inv: Tensor, bias: Tensor | None, target: Tensor, base_lp: Tensor
) -> Tensor:
    logits = torch.addcmul(q[:, None, :], coef[:, :, None], proj)  # [rows, n, V]
    logits.mul_(inv[:, :, None])
    if bias is not None:
        logits.add_(bias)
    index = target[:, None, None].expand(-1, logits.shape[1], 1)  # [rows, n, 1]
    target_logit = logits.gather(2, index).squeeze(2)  # [rows, n]
    return target_logit - torch.logsumexp(logits, dim=2) - base_lp[:, None]


def _exact_lse(q: Tensor, proj: Tensor, a: Tensor, c: Tensor, bias: Tensor | None, bad: Tensor) -> Tensor:
    """Two-pass logsumexp of the ``bad [rows, n]`` pairs, in batches no larger than ``proj`` itself."""
    rows, cols = bad.nonzero(as_tuple=True)  # [k] each
    step = max(1, proj.shape[0] // 2)
    out = []
    for lo in range(0, rows.numel(), step):
        r, n = rows[lo : lo + step], cols[lo : lo + step]
        logits = a[r, n, None] * q[r] + c[r, n, None] * proj[n]  # [k, V]
        out.append(torch.logsumexp(logits + bias if bias is not None else logits, dim=1))
    return torch.cat(out)


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

    def __init__(
        self,
        adapter: ModelAdapter,
        h_final: Tensor,
        target: Tensor,
        norm: str = "frozen",
        eps: float | None = None,
    ) -> None:
        spec = adapter.final_norm_spec()
        if eps is not None:  # a compatibility mode's ε in place of the model's own (gated_lpi_exp.compat)
            spec = replace(spec, eps=eps)
        self._setup(spec, adapter.unembedding().weight, h_final, target, norm)

    @classmethod
    def from_parts(
        cls, spec: NormSpec, unembedding: Tensor, h_final: Tensor, target: Tensor, norm: str = "frozen"
    ) -> Projection:
        """φ from a final-norm spec and ``W_U [V, d]`` directly (benchmarks; no model needed)."""
        self = cls.__new__(cls)
        self._setup(spec, unembedding, h_final, target, norm)
        return self

    def _setup(self, spec: NormSpec, weight: Tensor, h_final: Tensor, target: Tensor, norm: str) -> None:
        if norm not in NORM_MODES:
            raise AttributionError(f"norm must be one of {NORM_MODES}, got {norm!r}")
        self.spec = spec
        self.mode = norm
        self.target = target  # [batch]
        device = h_final.device
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
