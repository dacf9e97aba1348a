"""Causal ablations: zero chosen heads and FFN/expert neurons at every position, then restore exactly.

Zeroing an activation that feeds only one output column is the same as zeroing that column: a head's slice of
the ``o_proj`` input <-> those columns of ``o_proj.weight``; an FFN neuron's ``m_j`` <-> column ``j`` of
``down_proj`` (for an expert neuron, of that expert's ``W_down^e`` only). Editing the columns works with every
experts backend (``grouped_mm`` has no per-expert module to hook), costs nothing per forward, and the saved
originals are written back bit for bit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gated_lpi_exp.adapters import ModelAdapter, WeightSlice, get_adapter
from gated_lpi_exp.errors import AttributionError


@contextmanager
def ablate(
    model: nn.Module,
    *,
    heads: dict[int, list[int]] | None = None,
    ffn_neurons: dict[int, list[int]] | None = None,
) -> Iterator[nn.Module]:
    """Zero attention heads and FFN/expert neurons inside the ``with`` block.

    Args:
        model: A supported causal LM.
        heads: ``{layer: [head, ...]}``; zeroes each head's ``o_proj`` input slice at every position.
        ffn_neurons: ``{layer: [neuron, ...]}``; zeroes each neuron's activation ``m`` at every position
            (MoE index ``e * d_expert + j``: neuron ``j`` inside expert ``e`` only).

    Yields:
        The same model, ablated.

    Raises:
        AttributionError: A layer, head or neuron index is out of range.
    """
    adapter = get_adapter(model)
    slices = _ablation_slices(adapter, heads or {}, ffn_neurons or {})
    saved: list[tuple[WeightSlice, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param, index in slices:
                saved.append(((param, index), param[index].clone()))
                param[index] = 0
        yield model
    finally:
        with torch.no_grad():
            # Reverse order so overlapping slices end at their very first (original) values.
            for (param, index), original in reversed(saved):
                param[index] = original


def _ablation_slices(
    adapter: ModelAdapter, heads: dict[int, list[int]], ffn_neurons: dict[int, list[int]]
) -> list[WeightSlice]:
    slices: list[WeightSlice] = []
    for layer, units in sorted(heads.items()):
        chosen = _checked(layer, units, adapter.n_layers, adapter.n_heads, "head")
        if chosen:
            slices += adapter.head_slices(layer, chosen)
    for layer, units in sorted(ffn_neurons.items()):
        chosen = _checked(layer, units, adapter.n_layers, adapter.ffn_neurons, "FFN neuron")
        if chosen:
            slices += adapter.ffn_slices(layer, chosen)
    return slices


def _checked(layer: int, units: list[int], n_layers: int, n_units: int, kind: str) -> list[int]:
    if not 0 <= int(layer) < n_layers:
        raise AttributionError(f"layer {layer} out of range [0, {n_layers})")
    chosen = sorted({int(u) for u in units})
    bad = [u for u in chosen if not 0 <= u < n_units]
    if bad:
        raise AttributionError(f"{kind} index {bad[0]} out of range [0, {n_units}) in layer {layer}")
    return chosen
