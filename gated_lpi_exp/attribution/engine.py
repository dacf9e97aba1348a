"""Gated-LPI over every unit of the score table in docs/definitions.md, for a batch of prompts.

One hooked forward pass captures the activations at T; then, layer by layer, each unit's contribution is
pushed through φ (``projection.py``) in chunks sized to the memory budget. Nothing here names a model family.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gated_lpi_exp.adapters import FFNNeurons, ModelAdapter, NeuronGroup, get_adapter
from gated_lpi_exp.attribution.capture import Captured, capture
from gated_lpi_exp.attribution.kernels import resolve_kernel
from gated_lpi_exp.attribution.positions import prompt_relative, score_positions
from gated_lpi_exp.attribution.projection import (
    BaseState,
    Projection,
    chunk_scores,
    chunk_size,
    fused_chunk_size,
)
from gated_lpi_exp.attribution.result import Attribution
from gated_lpi_exp.compat.state import active_mode
from gated_lpi_exp.errors import AttributionError


@torch.no_grad()
def gated_lpi(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    target_ids: Tensor,
    *,
    norm: str = "frozen",
    memory_budget_mb: float = 512,
    progress: bool = False,
    attn_positions: bool | None = None,
) -> Attribution:
    """Score every attention neuron, head, FFN/expert neuron and layer for each prompt (the score table of docs/definitions.md).

    Args:
        model: A supported causal LM (see ``gated_lpi_exp.adapters``), any dtype; the math runs in float32.
        input_ids: ``[batch, seq]``, left or right padded.
        attention_mask: ``[batch, seq]``.
        target_ids: ``[batch]`` the token ``w`` (see ``gold_targets`` / ``predicted_targets``).
        norm: ``"frozen"`` (final-norm scale fixed at ``h_L``) or ``"exact"`` (the norm applied as it stands).
        memory_budget_mb: Budget for the chunk's float32 working tensors, in MiB: the shared projection
            ``[chunk, V]`` with a fused exp-sum kernel, ``[rows, chunk, V]`` logits with the eager one
            (``GATED_LPI_KERNEL``, see ``kernels.py``).
        progress: Show a progress bar over layers.
        attn_positions: Also score attention neurons per source position (``Attribution.attn_positions``);
            None = as the active compatibility mode says (``gated_lpi_exp.compat``), else False.

    Returns:
        The scores, float32, on the unembedding's device.

    Raises:
        AttributionError: Unsupported architecture, bad inputs, or non-finite scores.
    """
    adapter = get_adapter(model)
    if input_ids.shape != attention_mask.shape or target_ids.shape != input_ids.shape[:1]:
        raise AttributionError(
            f"shape mismatch: input_ids {tuple(input_ids.shape)}, attention_mask "
            f"{tuple(attention_mask.shape)}, target_ids {tuple(target_ids.shape)}"
        )
    if not bool(attention_mask.sum(1).gt(0).all()):
        raise AttributionError("every example needs at least one non-padding token")
    mode = active_mode(model)
    if attn_positions is None:
        attn_positions = mode is not None and mode.attn_positions
    acts = capture(adapter, input_ids, attention_mask, positions=attn_positions)
    target = target_ids.to(acts.h_final.device, torch.long)
    eps = mode.final_norm_eps if mode is not None else None
    projection = Projection(adapter, acts.h_final, target, norm, eps=eps)
    scores = _allocate(adapter, input_ids.shape[0], acts.h_final.device)
    if attn_positions:
        scores.update(_allocate_positions(adapter, attention_mask.to(acts.h_final.device)))
    budget = Budget(memory_budget_mb, resolve_kernel(acts.h_final.device))
    for layer in tqdm(range(adapter.n_layers), disable=not progress, desc="gated-lpi layers"):
        _score_attention(adapter, projection, acts, layer, scores, budget)
        if acts.z_pos is not None:
            _score_attention_positions(adapter, projection, acts, layer, scores, budget, attention_mask)
        _score_ffn(adapter, projection, acts, layer, scores, budget)
    for name, value in scores.items():
        if value is not None and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise AttributionError(f"non-finite Gated-LPI scores in {name!r}")
    return Attribution(
        **scores,
        target_ids=target,
        base_logprob=projection.base(acts.h_final).logprob,
        norm=norm,
    )


class Budget(NamedTuple):
    """The memory budget in MiB and the exp-sum backend (``kernels.resolve_kernel``) it is spent on."""

    mb: float
    kernel: str = "eager"

    def neuron_chunk(self, rows: int, vocab: int, size: int) -> int:
        """Neurons per chunk of a ``size``-neuron group, balanced so the last chunk is not a sliver."""
        step = (
            chunk_size(self.mb, rows, vocab) if self.kernel == "eager" else fused_chunk_size(self.mb, vocab)
        )
        pieces = -(-size // max(1, step))
        return -(-size // max(1, pieces))


def _allocate(adapter: ModelAdapter, batch: int, device: torch.device) -> dict[str, Tensor | None]:
    layers = adapter.n_layers
    zeros = dict(device=device, dtype=torch.float32)
    return {
        "ffn": torch.zeros(batch, layers, adapter.ffn_neurons, **zeros),  # [batch, layers, ffn_neurons]
        "attn": torch.zeros(batch, layers, adapter.attn_neurons, **zeros),  # [batch, layers, H*dh]
        "heads": torch.zeros(batch, layers, adapter.n_heads, **zeros),  # [batch, layers, heads]
        "ffn_layer": torch.zeros(batch, layers, **zeros),  # [batch, layers]
        "attn_layer": torch.zeros(batch, layers, **zeros),  # [batch, layers]
        "routed": (
            torch.zeros(batch, layers, adapter.n_experts, dtype=torch.bool, device=device)
            if adapter.is_moe
            else None
        ),
    }


def _score_attention(
    adapter: ModelAdapter, projection: Projection, acts: Captured, layer: int, scores: dict, budget: Budget
) -> None:
    base = projection.base(acts.r_in[:, layer])
    raw = acts.a_raw[:, layer] if acts.a_raw is not None else None
    neurons = adapter.attn_units(layer, acts.z[:, layer], raw)
    (group,), z = neurons.groups, neurons.coef  # z: [batch, H*dh]
    scores["attn"][:, layer] = _score_group(projection, base, group, z, budget)
    batch, heads, head_dim = z.shape[0], adapter.n_heads, adapter.head_dim
    w_o = group.block().to(z).reshape(-1, heads, head_dim)  # [d, heads, head_dim]
    per_head = torch.einsum("dhk,bhk->bhd", w_o, z.reshape(batch, heads, head_dim))  # [batch, heads, d]
    scores["heads"][:, layer] = _score_vectors(projection, base, per_head, budget)
    scores["attn_layer"][:, layer] = _score_vectors(projection, base, acts.a[:, layer, None], budget)[:, 0]


def _allocate_positions(adapter: ModelAdapter, attention_mask: Tensor) -> dict[str, Tensor]:
    batch, seq = attention_mask.shape
    return {
        # [batch, layers, seq, H*dh], prompt-relative positions; 0 past each prompt's length
        "attn_positions": attention_mask.new_zeros(
            batch, adapter.n_layers, seq, adapter.attn_neurons, dtype=torch.float32
        ),
        "prompt_lengths": attention_mask.sum(dim=1).long(),  # [batch]
    }


def _score_attention_positions(
    adapter: ModelAdapter,
    projection: Projection,
    acts: Captured,
    layer: int,
    scores: dict,
    budget: Budget,
    attention_mask: Tensor,
) -> None:
    z_pos = acts.z_pos[:, layer]  # [batch, seq, H*dh]
    batch, seq, size = z_pos.shape
    raw = acts.a_raw[:, layer].repeat_interleave(seq, dim=0) if acts.a_raw is not None else None
    # The same units as the attention neurons, one per (row, position): a post-norm scale applies alike.
    neurons = adapter.attn_units(layer, z_pos.reshape(batch * seq, size), raw)
    (group,), coef = neurons.groups, neurons.coef.reshape(batch, seq, size)
    mask = attention_mask.to(z_pos.device)
    base = projection.base(acts.r_in[:, layer])
    padded = score_positions(projection, base, group, coef, mask.bool(), budget)  # [batch, seq, H*dh]
    scores["attn_positions"][:, layer] = prompt_relative(padded, mask)


def _score_ffn(
    adapter: ModelAdapter, projection: Projection, acts: Captured, layer: int, scores: dict, budget: Budget
) -> None:
    base = projection.base(acts.r_mid[:, layer])
    routing = acts.routing[:, layer] if acts.routing is not None else None
    raw = acts.f_raw[:, layer] if acts.f_raw is not None else None
    neurons = adapter.ffn_units(layer, acts.x_hat[:, layer], routing, raw)
    score_neurons(projection, base, neurons, budget, out=scores["ffn"][:, layer])
    if neurons.routed is not None:
        scores["routed"][:, layer] = neurons.routed
    scores["ffn_layer"][:, layer] = _score_vectors(projection, base, acts.f[:, layer, None], budget)[:, 0]


def score_neurons(
    projection: Projection, base: BaseState, neurons: FFNNeurons, budget: Budget, out: Tensor | None = None
) -> Tensor:
    """Scores ``[batch, ffn_neurons]`` of one layer's FFN/expert neurons: the hot path of the engine.

    Args:
        projection: The model's φ.
        base: The layer's projected base states (``projection.base(r_mid)``).
        neurons: The layer's coefficients and weight-column groups (``adapter.ffn_units``).
        budget: Memory budget and exp-sum backend.
        out: ``[batch, ffn_neurons]`` to write into (zeros where no group writes); a new one when None.

    Returns:
        ``out``; unrouted experts are never written, so they stay exactly 0.
    """
    if out is None:
        out = neurons.coef.new_zeros(neurons.coef.shape)  # [batch, ffn_neurons]
    for group in neurons.groups:
        block = _score_group(projection, base, group, neurons.coef, budget)  # [rows, size]
        if group.rows is None:
            out[:, group.start : group.start + group.size] = block
        else:
            out[group.rows, group.start : group.start + group.size] = block
    return out


def _score_group(
    projection: Projection, base: BaseState, group: NeuronGroup, coef_all: Tensor, budget: Budget
) -> Tensor:
    """Scores ``[rows, size]`` of one neuron group; ``coef_all [batch, N]`` is indexed at the group's span.

    Each chunk's projection ``P [n, V]`` is computed once and shared by every row of the group.
    """
    rows = group.rows
    q = base.q if rows is None else base.q[rows]  # [rows, V]
    target = projection.target if rows is None else projection.target[rows]
    base_lp = base.logprob if rows is None else base.logprob[rows]
    coef_rows = coef_all if rows is None else coef_all[rows]  # [rows, N]
    step = budget.neuron_chunk(q.shape[0], q.shape[1], group.size)
    out = q.new_empty(q.shape[0], group.size)  # [rows, size]
    for lo in range(0, group.size, step):
        hi = min(lo + step, group.size)
        proj, centered = projection.columns(group.block(lo, hi))  # [n, V], [d, n]
        coef = coef_rows[:, group.start + lo : group.start + hi]  # [rows, n]
        inv = projection.neuron_inv(base, rows, coef, centered)  # [rows, n]
        out[:, lo:hi] = chunk_scores(q, coef, proj, inv, projection.bias, target, base_lp, budget.kernel)
        del proj  # free this chunk's projection before the next one is allocated
    return out


def _score_vectors(projection: Projection, base: BaseState, vecs: Tensor, budget: Budget) -> Tensor:
    """Scores ``[batch, k]`` of per-example contribution vectors ``vecs [batch, k, d]`` (heads, layers).

    Their projections are per example (``[batch, k, V]``), so nothing is shared and the eager kernel runs.
    """
    batch, k = vecs.shape[:2]
    step = chunk_size(budget.mb, batch, base.q.shape[1])
    out = vecs.new_empty(batch, k)
    ones = vecs.new_ones(batch, min(step, k))
    for lo in range(0, k, step):
        hi = min(lo + step, k)
        proj, inv = projection.vectors(base, vecs[:, lo:hi])  # [batch, n, V], [batch, n]
        out[:, lo:hi] = chunk_scores(
            base.q, ones[:, : hi - lo], proj, inv, projection.bias, projection.target, base.logprob
        )
    return out
