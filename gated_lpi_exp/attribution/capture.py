"""One hooked forward pass that records every activation Gated-LPI needs, at position T only.

Site names follow one pattern (the notation of docs/definitions.md): ``r_in``, ``z``, ``a``, ``r_mid``, ``x_hat``, ``f`` per layer,
``h_final`` once, and ``routing`` (the model's own expert choice) for MoE layers. Which module input or output
each site is comes from the adapter's ``READS`` table; post-norm families add ``a_raw``/``f_raw``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from gated_lpi_exp.adapters import ModelAdapter
from gated_lpi_exp.attribution.positions import record_positions
from gated_lpi_exp.attribution.targets import last_token_positions, position_ids_from_mask

PER_LAYER_SITES = ("r_in", "z", "a", "r_mid", "x_hat", "f")
RAW_SITES = ("a_raw", "f_raw")


@dataclass
class Captured:
    """Activations at T, float32 on the compute device."""

    r_in: Tensor  # [batch, layers, d]
    z: Tensor  # [batch, layers, heads*head_dim]
    a: Tensor  # [batch, layers, d]
    r_mid: Tensor  # [batch, layers, d]
    x_hat: Tensor  # [batch, layers, d]
    f: Tensor  # [batch, layers, d]
    h_final: Tensor  # [batch, d]
    routing: Tensor | None  # [batch, layers, top_k] long, MoE only; -1 in layers without experts
    a_raw: Tensor | None = None  # [batch, layers, d] attention output before its post-norm (post-norm only)
    f_raw: Tensor | None = None  # [batch, layers, d] FFN output before its post-norm (post-norm only)
    z_pos: Tensor | None = (
        None  # [batch, layers, seq, heads*head_dim] z split by source position (positions.py)
    )


def _first_tensor(value: object) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


_PICK: dict[str, Callable] = {  # (args, kwargs, output) of a forward hook -> the site's tensor
    "input": lambda args, kwargs, out: args[0] if args else kwargs["hidden_states"],
    "output": lambda args, kwargs, out: _first_tensor(out),
}


class _Recorder:
    """Forward hooks that keep each site's value at T, as float32 on the compute device."""

    def __init__(self, adapter: ModelAdapter, last: Tensor, seq: int) -> None:
        self.adapter, self.last, self.seq = adapter, last, seq
        self.rows = torch.arange(last.shape[0], device=last.device)
        self.out_device = adapter.compute_device()
        sites = (*PER_LAYER_SITES, *RAW_SITES, "routing")
        self.store: dict[str, list] = {s: [None] * adapter.n_layers for s in sites}
        self.final: list[Tensor] = []
        self.handles: list = []

    def at_t(self, hidden: Tensor) -> Tensor:
        """``[batch, seq, n] -> [batch, n]`` at each row's T."""
        picked = hidden[self.rows.to(hidden.device), self.last.to(hidden.device)]
        return picked.to(self.out_device, torch.float32 if picked.is_floating_point() else picked.dtype)

    def keep(self, site: str, layer: int, pick: Callable) -> Callable:
        def hook(module, args, *rest) -> None:  # returns None: the forward pass is left untouched
            self.store[site][layer] = self.at_t(pick(args, *rest))

        return hook

    def register(self) -> None:
        """Hook every site of every layer, the router (MoE) and the final norm."""
        adapter = self.adapter
        for layer in range(adapter.n_layers):
            pre = adapter.layer(layer).register_forward_pre_hook(
                self.keep("r_in", layer, lambda args, kwargs: args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
            self.handles.append(pre)
            posts = [
                (adapter.module(where, layer), site, _PICK[side])
                for site, (where, side) in ((s, r) for s, r in adapter.reads.items() if r is not None)
            ]
            if adapter.routed_layer(layer):
                posts.append((adapter.module("router", layer), "routing", self._routing))
            for module, site, pick in posts:
                self.handles.append(
                    module.register_forward_hook(self.keep(site, layer, pick), with_kwargs=True)
                )
        final = adapter.final_norm().register_forward_pre_hook(
            lambda m, args: self.final.append(self.at_t(args[0]))
        )
        self.handles.append(final)

    def _routing(self, args: tuple, kwargs: dict, out: object) -> Tensor:
        # Router outputs are flattened over [batch * seq]; unflatten before picking T.
        return self.adapter.read_routing(out).reshape(len(self.rows), self.seq, -1)  # [batch, seq, top_k]

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def capture(
    adapter: ModelAdapter, input_ids: Tensor, attention_mask: Tensor, *, positions: bool = False
) -> Captured:
    """Run the backbone once (padding-safe position ids) and keep each site's value at T.

    Args:
        adapter: The model's adapter.
        input_ids: ``[batch, seq]``.
        attention_mask: ``[batch, seq]``.
        positions: Also keep ``z`` split by source position (``z_pos``), through the recording attention of
            ``positions.py``.

    Returns:
        The captured activations.
    """
    device = adapter.input_device()
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    last = last_token_positions(attention_mask)
    recorder = _Recorder(adapter, last, input_ids.shape[1])
    with record_positions(adapter, last) if positions else nullcontext() as by_position:
        try:
            recorder.register()
            adapter.backbone()(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            )
        finally:
            recorder.remove()
    store = recorder.store
    if adapter.reads.get("r_mid") is None:  # parallel blocks: the FFN base is r_in + a, held nowhere
        store["r_mid"] = [r + a for r, a in zip(store["r_in"], store["a"], strict=True)]
    sites = [s for s in (*PER_LAYER_SITES, *RAW_SITES) if store[s][0] is not None]
    stacked = {s: torch.stack(store[s], dim=1) for s in sites}  # [batch, layers, n]
    z_pos = (
        torch.stack(by_position.z_pos, dim=1) if by_position is not None else None
    )  # [batch, layers, seq, n]
    routing = _routing_table(adapter, store["routing"])
    return Captured(**stacked, h_final=recorder.final[-1], routing=routing, z_pos=z_pos)


def _routing_table(adapter: ModelAdapter, per_layer: list[Tensor | None]) -> Tensor | None:
    """``[batch, layers, top_k]`` expert choices; -1 in the dense layers of a mixed stack."""
    if not adapter.is_moe:
        return None
    known = next(t for t in per_layer if t is not None)
    return torch.stack([known.new_full(known.shape, -1) if t is None else t for t in per_layer], dim=1)
