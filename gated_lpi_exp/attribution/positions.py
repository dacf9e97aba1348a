"""Attention neurons per source position: what each (head, dimension) carries from each token to T.

The o_proj input at T is a sum over the positions ``j`` the query at T attends to,

    z[h*dh + k] = Σ_j p[h, T, j] · v[h, j, k],

so attention neuron ``(h, k)`` splits into one unit per source position with coefficient
``p[h, T, j] · v[h, j, k]`` on the same o_proj column ``W_O[:, h*dh + k]``: the per-position contributions
sum to the neuron's contribution exactly. Scoring them needs the attention probabilities at T and the value
vectors, which no attention module returns in a form every implementation shares; :func:`record_positions`
therefore runs the pass through a registered eager attention function that keeps both (at T only).

Positions are stored prompt-relative: index 0 is the prompt's first real token, whatever the padding, and
positions past the prompt's length hold exactly 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from gated_lpi_exp.adapters import ModelAdapter, NeuronGroup
from gated_lpi_exp.attribution.projection import BaseState, Projection, chunk_scores
from gated_lpi_exp.config import POSITION_REDUCTIONS
from gated_lpi_exp.errors import AttributionError

if TYPE_CHECKING:
    from gated_lpi_exp.attribution.engine import Budget

RECORDING_ATTENTION = "gated_lpi_positions"
"""Name of the recording attention implementation in transformers' attention registry."""

# id(attention module) -> (recorder, layer) while a recording pass runs.
_ACTIVE: dict[int, tuple[_PositionRecorder, int]] = {}


class _PositionRecorder:
    """Keeps ``z_pos[b, j, h*dh + k] = p[b, h, T_b, j] · v[b, h, j, k]`` per layer, float32."""

    def __init__(self, adapter: ModelAdapter, last: Tensor) -> None:
        self.last = last  # [batch]
        self.out_device = adapter.compute_device()
        self.z_pos: list[Tensor | None] = [None] * adapter.n_layers

    def keep(self, layer: int, probs: Tensor, values: Tensor) -> None:
        """``probs [batch, heads, q, k]``, ``values [batch, heads, k, head_dim]`` (heads already repeated)."""
        rows = torch.arange(probs.shape[0], device=probs.device)
        at_t = probs[rows, :, self.last.to(probs.device), :]  # [batch, heads, k]
        coef = at_t[..., None].float() * values.float()  # [batch, heads, k, head_dim]
        batch, heads, seq, head_dim = coef.shape
        self.z_pos[layer] = coef.permute(0, 2, 1, 3).reshape(batch, seq, heads * head_dim).to(self.out_device)


def _recording_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """transformers' eager attention (float32 softmax), keeping the probabilities at T and the values."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise AttributionError(
            "per-position attention neurons need plain softmax attention (no softcap/sinks)"
        )
    n_rep = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)  # [batch, heads, k, head_dim]
    value = value.repeat_interleave(n_rep, dim=1)  # [batch, heads, k, head_dim]
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, heads, q, k]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(probs, value)  # [batch, heads, q, head_dim]
    entry = _ACTIVE.get(id(module))
    if entry is not None:
        recorder, layer = entry
        recorder.keep(layer, probs, value)
    return output.transpose(1, 2).contiguous(), probs


def _register() -> None:
    if RECORDING_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
        AttentionMaskInterface.register(RECORDING_ATTENTION, eager_mask)


def attention_module(adapter: ModelAdapter, layer: int) -> nn.Module:
    """The attention block of ``layer``: the module that owns the layer's o_proj."""
    path = adapter.SITES["o_proj"].format(layer=layer).rsplit(".", 1)[0]
    return adapter.model.get_submodule(path)


@contextmanager
def record_positions(adapter: ModelAdapter, last: Tensor) -> Iterator[_PositionRecorder]:
    """Inside the block, the model's attention runs through the recording function; restored on exit.

    Args:
        adapter: The model's adapter.
        last: ``[batch]`` each row's T.

    Yields:
        The recorder; after the pass, ``recorder.z_pos[layer]`` is ``[batch, seq, heads*head_dim]``.
    """
    _register()
    recorder = _PositionRecorder(adapter, last)
    config = adapter.model.config
    previous = config._attn_implementation
    modules = {id(attention_module(adapter, layer)): layer for layer in range(adapter.n_layers)}
    _ACTIVE.update({key: (recorder, layer) for key, layer in modules.items()})
    config._attn_implementation = RECORDING_ATTENTION
    try:
        yield recorder
    finally:
        config._attn_implementation = previous
        for key in modules:
            _ACTIVE.pop(key, None)


def score_positions(
    projection: Projection,
    base: BaseState,
    group: NeuronGroup,
    z_pos: Tensor,
    valid: Tensor,
    budget: Budget,
) -> Tensor:
    """Scores ``[batch, seq, heads*head_dim]`` of every attention neuron at every source position.

    Each chunk's column projection ``P [n, V]`` is computed once and shared by every row and position;
    positions that are padding in a row are never scored there and stay exactly 0.

    Args:
        projection: The model's φ.
        base: The layer's projected base states (``projection.base(r_in)``).
        group: The layer's attention-neuron columns (the group of ``adapter.attn_units``).
        z_pos: ``[batch, seq, heads*head_dim]`` per-position coefficients as they multiply the group's
            columns (padded coordinates; for a post-norm family already times the frozen norm's scale).
        valid: ``[batch, seq]`` bool, the real tokens.
        budget: The engine's ``Budget``.
    """
    batch, seq, size = z_pos.shape
    out = z_pos.new_zeros(batch, seq, size)  # [batch, seq, H*dh]
    step = budget.neuron_chunk(batch, base.q.shape[1], size)
    rows_at = [valid[:, j].nonzero(as_tuple=True)[0] for j in range(seq)]  # [rows] per position
    for lo in range(0, size, step):
        hi = min(lo + step, size)
        proj, centered = projection.columns(group.block(lo, hi))  # [n, V], [d, n]
        for j, rows in enumerate(rows_at):
            if rows.numel() == 0:
                continue
            coef = z_pos[rows, j, lo:hi]  # [rows, n]
            inv = projection.neuron_inv(base, rows, coef, centered)  # [rows, n]
            q, target, base_lp = base.q[rows], projection.target[rows], base.logprob[rows]
            out[rows, j, lo:hi] = chunk_scores(
                q, coef, proj, inv, projection.bias, target, base_lp, budget.kernel
            )
        del proj
    return out


def prompt_relative(values: Tensor, attention_mask: Tensor) -> Tensor:
    """Shift ``[batch, seq, ...]`` so index 0 is each row's first real token; 0 past the prompt's length."""
    batch, seq = attention_mask.shape
    mask = attention_mask.to(values.device).bool()
    first = mask.long().argmax(dim=1)  # [batch]
    lengths = mask.sum(dim=1)  # [batch]
    offsets = torch.arange(seq, device=values.device)  # [seq]
    index = (first[:, None] + offsets).clamp(max=seq - 1)  # [batch, seq]
    shifted = values.gather(1, index.view(batch, seq, *[1] * (values.dim() - 2)).expand_as(values))
    keep = (offsets[None, :] < lengths[:, None]).view(batch, seq, *[1] * (values.dim() - 2))
    return torch.where(keep, shifted, torch.zeros((), dtype=values.dtype, device=values.device))


def reduce_positions(scores: Tensor, lengths: Tensor, how: str = "absmax") -> Tensor:
    """One score per attention neuron from prompt-relative per-position scores.

    ``absmax``: the per-position score of largest magnitude, sign kept (the unit's strongest source
    position; what a top set by |I| over the per-position units picks first). ``max``: the largest signed
    score (what the notebooks' descending sort picks first). ``sum``: the sum over positions (not the score of
    the summed contribution: a score is not linear in its contribution).

    Args:
        scores: ``[batch, layers, seq, n]`` prompt-relative (see :func:`prompt_relative`).
        lengths: ``[batch]`` real positions of each prompt; only these are reduced over.
        how: One of :data:`POSITION_REDUCTIONS`.

    Returns:
        ``[batch, layers, n]``.

    Raises:
        ValueError: An unknown ``how``.
    """
    seq = scores.shape[2]
    real = (
        torch.arange(seq, device=scores.device)[None, :] < lengths.to(scores.device)[:, None]
    )  # [batch, seq]
    real = real[:, None, :, None]  # [batch, 1, seq, 1]
    if how == "sum":
        return scores.masked_fill(~real, 0.0).sum(dim=2)
    if how == "absmax":
        pick = scores.abs().masked_fill(~real, -1.0).argmax(dim=2, keepdim=True)  # [batch, layers, 1, n]
        return scores.gather(2, pick).squeeze(2)
    if how == "max":
        return scores.masked_fill(~real, float("-inf")).amax(dim=2)
    raise ValueError(f"unknown position reduction {how!r}; choose one of {', '.join(POSITION_REDUCTIONS)}")
