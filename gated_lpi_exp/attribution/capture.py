"""One hooked forward pass that records every activation Gated-LPI needs, at position T only.

Site names follow one pattern (the notation of docs/definitions.md): ``r_in``, ``z``, ``a``, ``r_mid``, ``x_hat``, ``f`` per layer,
``h_final`` once, and ``routing`` (the model's own expert choice) for MoE layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gated_lpi_exp.adapters import ModelAdapter
from gated_lpi_exp.attribution.targets import last_token_positions, position_ids_from_mask

PER_LAYER_SITES = ("r_in", "z", "a", "r_mid", "x_hat", "f")


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
    routing: Tensor | None  # [batch, layers, top_k] long, MoE only


def _first_tensor(value: object) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


class _Recorder:
    """Forward hooks that keep each site's value at T, as float32 on the compute device."""

    def __init__(self, adapter: ModelAdapter, last: Tensor, seq: int) -> None:
        self.adapter, self.last, self.seq = adapter, last, seq
        self.rows = torch.arange(last.shape[0], device=last.device)
        self.out_device = adapter.compute_device()
        self.store: dict[str, list] = {s: [None] * adapter.n_layers for s in (*PER_LAYER_SITES, "routing")}
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
                (adapter.o_proj(layer), "z", lambda args, out: args[0]),
                (adapter.o_proj(layer), "a", lambda args, out: out),
                (adapter.post_attn_norm(layer), "r_mid", lambda args, out: args[0]),
                (adapter.post_attn_norm(layer), "x_hat", lambda args, out: out),
                (adapter.mlp(layer), "f", lambda args, out: _first_tensor(out)),
            ]
            if adapter.is_moe:
                posts.append((adapter.module("router", layer), "routing", self._routing))
            for module, site, pick in posts:
                self.handles.append(module.register_forward_hook(self.keep(site, layer, pick)))
        final = adapter.final_norm().register_forward_pre_hook(
            lambda m, args: self.final.append(self.at_t(args[0]))
        )
        self.handles.append(final)

    def _routing(self, args: tuple, out: object) -> Tensor:
        # Router outputs are flattened over [batch * seq]; unflatten before picking T.
        return self.adapter.read_routing(out).reshape(len(self.rows), self.seq, -1)  # [batch, seq, top_k]

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def capture(adapter: ModelAdapter, input_ids: Tensor, attention_mask: Tensor) -> Captured:
    """Run the backbone once (padding-safe position ids) and keep each site's value at T.

    Args:
        adapter: The model's adapter.
        input_ids: ``[batch, seq]``.
        attention_mask: ``[batch, seq]``.

    Returns:
        The captured activations.
    """
    device = adapter.input_device()
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    recorder = _Recorder(adapter, last_token_positions(attention_mask), input_ids.shape[1])
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
    stacked = {s: torch.stack(recorder.store[s], dim=1) for s in PER_LAYER_SITES}  # [batch, layers, n]
    routing = torch.stack(recorder.store["routing"], dim=1) if adapter.is_moe else None
    return Captured(**stacked, h_final=recorder.final[-1], routing=routing)
