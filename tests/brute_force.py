"""An independent brute force of every unit's Gated-LPI score, for every supported family.

It shares nothing with the engine or the adapters. Per family it names the modules itself (``anatomy``),
records one unpadded example with its own hooks, and finds each unit's contribution by zeroing the unit's
weight column(s) and re-running the real module on the recorded input: ``c = module(x) − module_zeroed(x)``.
A post-sublayer norm (OLMo-2) is then applied frozen at its scale on the whole sublayer output. ``base + c``
goes through the real final norm (exact) or the frozen formula written from the definition (frozen), then the
real ``lm_head``. Everything runs on a float64 copy of the model with the eager experts loop.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

FIELDS = ("ffn", "attn", "heads", "ffn_layer", "attn_layer")


@dataclass
class Anatomy:
    """Where one family keeps what the brute force touches."""

    layers: list[nn.Module]
    final_norm: nn.Module
    attn_out: str  # the output projection, inside a layer
    attn_post_norm: str | None = None  # post-norms on the sublayer outputs (OLMo-2/3)
    ffn_post_norm: str | None = None

    @staticmethod
    def of(model: nn.Module) -> Anatomy:
        if model.config.model_type == "gpt_neox":
            return Anatomy(list(model.gpt_neox.layers), model.gpt_neox.final_layer_norm, "attention.dense")
        if model.config.model_type in ("olmo2", "olmo3"):
            post = ("post_attention_layernorm", "post_feedforward_layernorm")
            return Anatomy(list(model.model.layers), model.model.norm, "self_attn.o_proj", *post)
        return Anatomy(list(model.model.layers), model.model.norm, "self_attn.o_proj")


def ffn_columns(mlp: nn.Module) -> list[tuple[nn.Parameter, tuple]]:
    """Every FFN unit's down-projection column, in the layout the docs define.

    Dense: ``down_proj`` / ``dense_4h_to_h`` column j. MoE: routed experts expert-major (``e * w + j``), then
    the shared expert's columns.
    """
    if hasattr(mlp, "dense_4h_to_h"):
        weight = mlp.dense_4h_to_h.weight
        return [(weight, (slice(None), j)) for j in range(weight.shape[1])]
    if not hasattr(mlp, "experts"):
        weight = mlp.down_proj.weight
        return [(weight, (slice(None), j)) for j in range(weight.shape[1])]
    down = mlp.experts.down_proj  # [E, d, w] (transformers' default, not transposed)
    cols = [(down, (e, slice(None), j)) for e in range(down.shape[0]) for j in range(down.shape[2])]
    shared = getattr(mlp, "shared_expert", None) or getattr(mlp, "shared_experts", None)
    if shared is not None:
        cols += [(shared.down_proj.weight, (slice(None), j)) for j in range(shared.down_proj.weight.shape[1])]
    return cols


@contextmanager
def zeroed(param: nn.Parameter, index: tuple) -> Iterator[None]:
    saved = param.data[index].clone()
    param.data[index] = 0
    try:
        yield
    finally:
        param.data[index] = saved


def _out(value) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


def record(model: nn.Module, seq: list[int]) -> dict:
    """One example's activations at its last position (float64 model), via hooks written for this test."""
    anatomy = Anatomy.of(model)
    rec: dict = {k: [] for k in ("r_in", "z", "a_raw", "a", "x", "f_raw", "f")}

    def keep(site: str, use_input: bool):
        def hook(module, args, kwargs, out) -> None:
            value = (args[0] if args else kwargs["hidden_states"]) if use_input else _out(out)
            rec[site].append(value[0, -1])

        return hook

    def keep_input(site: str):
        def hook(module, args, kwargs) -> None:
            rec[site].append((args[0] if args else kwargs["hidden_states"])[0, -1])

        return hook

    handles = []
    for layer in anatomy.layers:
        handles.append(layer.register_forward_pre_hook(keep_input("r_in"), with_kwargs=True))
        o_proj = layer.get_submodule(anatomy.attn_out)
        handles.append(o_proj.register_forward_hook(keep("z", True), with_kwargs=True))
        handles.append(o_proj.register_forward_hook(keep("a_raw", False), with_kwargs=True))
        a_site = layer.get_submodule(anatomy.attn_post_norm) if anatomy.attn_post_norm else o_proj
        handles.append(a_site.register_forward_hook(keep("a", False), with_kwargs=True))
        handles.append(layer.mlp.register_forward_hook(keep("x", True), with_kwargs=True))
        handles.append(layer.mlp.register_forward_hook(keep("f_raw", False), with_kwargs=True))
        f_site = layer.get_submodule(anatomy.ffn_post_norm) if anatomy.ffn_post_norm else layer.mlp
        handles.append(f_site.register_forward_hook(keep("f", False), with_kwargs=True))

    def keep_h_l(module, args) -> None:  # returns None: the input is left untouched
        rec["h_L"] = args[0][0, -1]

    handles.append(anatomy.final_norm.register_forward_pre_hook(keep_h_l))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    out = {k: torch.stack(v) for k, v in rec.items() if isinstance(v, list)}
    return {**out, "h_L": rec["h_L"], "logits": logits}


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy running the eager per-expert loop (no grouped matmul kernel)."""
    twin = copy.deepcopy(model).double()
    twin.config._experts_implementation = "eager"
    return twin


def _frozen(rms_or_layer: nn.Module, x: Tensor, raw: Tensor) -> Tensor:
    """A norm's linear part applied to ``x`` with its scale frozen at its value on ``raw`` (any shape)."""
    layer_norm = isinstance(rms_or_layer, nn.LayerNorm) or "LayerNorm" in type(rms_or_layer).__name__
    eps = getattr(rms_or_layer, "variance_epsilon", None) or getattr(rms_or_layer, "eps", 1e-5)
    centered_raw = raw - raw.mean() if layer_norm else raw
    s = torch.sqrt(centered_raw.pow(2).mean() + eps)
    y = (x - x.mean(-1, keepdim=True)) / s if layer_norm else x / s
    weight = getattr(rms_or_layer, "weight", None)
    return y * weight if weight is not None else y


def brute_force(model: nn.Module, seq: list[int], target: int) -> dict[str, dict[str, Tensor]]:
    """Every unit's score for one example, ``{norm: {field: [layers, units]}}`` for both norm modes."""
    twin = float64_copy(model)
    anatomy = Anatomy.of(twin)
    acts = record(twin, seq)
    final, lm_head = anatomy.final_norm, twin.lm_head

    def logp(u: Tensor, norm: str) -> Tensor:  # [n, d] -> [n]
        with torch.no_grad():
            if norm == "exact":
                normed = final(u)
            else:
                normed = _frozen(final, u, acts["h_L"])
                if getattr(final, "bias", None) is not None:
                    normed = normed + final.bias  # the final norm's β stays in φ
            return torch.log_softmax(lm_head(normed), dim=-1)[:, target]

    contributions = [_layer_contributions(anatomy, twin, i, acts) for i in range(len(anatomy.layers))]
    width = max(c["ffn"].shape[0] for c in contributions)
    for c in contributions:  # a narrower (dense) layer of a mixed stack: padding that adds nothing
        c["ffn"] = torch.cat([c["ffn"], c["ffn"].new_zeros(width - c["ffn"].shape[0], c["ffn"].shape[1])])
    out: dict[str, dict[str, Tensor]] = {}
    for norm in ("frozen", "exact"):
        fields: dict[str, list] = {k: [] for k in FIELDS}
        for i, c in enumerate(contributions):
            for name, base in (("attn", acts["r_in"][i]), ("ffn", acts["r_in"][i] + acts["a"][i])):
                ref = logp(base[None], norm)
                keys = (name, "heads", f"{name}_layer") if name == "attn" else (name, f"{name}_layer")
                for key in keys:
                    vecs = c[key]  # [n, d]
                    scores = logp(base + vecs, norm) - ref
                    fields[key].append(torch.where(vecs.abs().sum(-1) > 0, scores, 0.0))
        out[norm] = {k: torch.stack(v).float() for k, v in fields.items()}
        for key in ("attn_layer", "ffn_layer"):
            out[norm][key] = out[norm][key][:, 0]  # [layers]
    return out


def _layer_contributions(anatomy: Anatomy, twin: nn.Module, i: int, acts: dict) -> dict[str, Tensor]:
    """Each unit's vector added to the residual at layer ``i``, by zeroing its columns and re-running."""
    layer = anatomy.layers[i]
    o_proj, mlp = layer.get_submodule(anatomy.attn_out), layer.mlp
    z, x = acts["z"][i], acts["x"][i]
    head_dim = z.shape[0] // twin.config.num_attention_heads

    def attn_delta(index: tuple) -> Tensor:
        with torch.no_grad(), zeroed(o_proj.weight, index):
            return acts["a_raw"][i] - o_proj(z)

    def ffn_delta(param: nn.Parameter, index: tuple) -> Tensor:
        with torch.no_grad(), zeroed(param, index):
            return acts["f_raw"][i] - _out(mlp(x[None, None]))[0, 0]

    neurons = torch.stack([attn_delta((slice(None), k)) for k in range(z.shape[0])])
    heads = torch.stack(
        [
            attn_delta((slice(None), slice(h * head_dim, (h + 1) * head_dim)))
            for h in range(z.shape[0] // head_dim)
        ]
    )
    ffn = torch.stack([ffn_delta(p, idx) for p, idx in ffn_columns(mlp)])
    if anatomy.attn_post_norm:  # frozen on the whole sublayer output, so units sum to what it adds
        neurons, heads = (
            _frozen(layer.get_submodule(anatomy.attn_post_norm), v, acts["a_raw"][i])
            for v in (neurons, heads)
        )
    if anatomy.ffn_post_norm:
        ffn = _frozen(layer.get_submodule(anatomy.ffn_post_norm), ffn, acts["f_raw"][i])
    return {
        "attn": neurons,
        "heads": heads,
        "attn_layer": acts["a"][i][None],
        "ffn": ffn,
        "ffn_layer": acts["f"][i][None],
    }
