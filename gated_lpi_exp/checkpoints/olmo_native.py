"""OLMo v1's native checkpoint layout (``model_type`` ``hf_olmo``) converted into transformers' ``OlmoForCausalLM``.

The paper's dense model, ``allenai/OLMo-7B``, publishes its training branches in the layout of the OLMo
training code, which transformers can only load by running the repository's own Python code. The weights
map one-to-one onto ``OlmoForCausalLM``, so they are converted on load instead (no remote code):

============================================  ===================================================
native key (under ``model.transformer.``)     ``OlmoForCausalLM`` key
============================================  ===================================================
``wte.weight``                                ``model.embed_tokens.weight``
``blocks.{i}.att_proj.weight`` = [q; k; v]    ``model.layers.{i}.self_attn.{q,k,v}_proj.weight``
``blocks.{i}.attn_out.weight``                ``model.layers.{i}.self_attn.o_proj.weight``
``blocks.{i}.ff_proj.weight`` = [up; gate]    ``model.layers.{i}.mlp.{up,gate}_proj.weight``
``blocks.{i}.ff_out.weight``                  ``model.layers.{i}.mlp.down_proj.weight``
``ff_out.weight`` (or ``wte`` when tied)      ``lm_head.weight``
============================================  ===================================================

``ff_proj`` is up then gate because OLMo's SwiGLU is ``x, gate = ff_proj(h).chunk(2); silu(gate) * x``, the
same product as ``OlmoMLP``'s ``silu(gate_proj(h)) * up_proj(h)``. The norms are LayerNorms without
parameters (no keys), and ``embedding_size`` (the padded embedding rows, >= ``vocab_size``) becomes the
model's ``vocab_size``, as in transformers' own conversion script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import OlmoConfig

from gated_lpi_exp.errors import CheckpointError

NATIVE_MODEL_TYPE = "hf_olmo"

# Fields whose value OlmoForCausalLM cannot represent otherwise, with OLMo's own default when absent.
_REQUIRED = {
    "activation_type": ("swiglu", "swiglu"),
    "block_type": ("sequential", "sequential"),
    "block_group_size": (1, 1),
    "alibi": (False, False),
    "rope": (True, False),
    "attention_layer_norm": (False, False),
    "embedding_layer_norm": (False, False),
    "layer_norm_with_affine": (False, True),
    "include_bias": (False, True),
    "scale_logits": (False, False),
    "norm_after": (False, False),
}
_LAYER_NORMS = ("default", "low_precision")  # the same math; low_precision only casts, a no-op in float32
_OLMO_LAYERNORM_EPS = 1e-5  # OlmoLayerNorm hard-codes it


def is_native_olmo(config: dict[str, Any]) -> bool:
    """True for a ``config.json`` written by OLMo v1's own Hugging Face wrapper."""
    return config.get("model_type") == NATIVE_MODEL_TYPE


def native_olmo_config(native: dict[str, Any], path: Path) -> OlmoConfig:
    """The ``OlmoConfig`` of a native ``config.json``.

    Raises:
        CheckpointError: naming ``path``, when a field is missing or describes an architecture
            ``OlmoForCausalLM`` does not have (another activation, biases, affine norms, ALiBi, ...).
    """
    for key, (needed, default) in _REQUIRED.items():
        value = native.get(key, default)
        if value != needed:
            raise _bad(path, f"{key}={value!r}, but OlmoForCausalLM needs {key}={needed!r}")
    if native.get("layer_norm_type", "default") not in _LAYER_NORMS:
        raise _bad(
            path, f"layer_norm_type={native['layer_norm_type']!r}; supported: {', '.join(_LAYER_NORMS)}"
        )
    if float(native.get("layer_norm_eps", _OLMO_LAYERNORM_EPS)) != _OLMO_LAYERNORM_EPS:
        raise _bad(path, f"layer_norm_eps={native['layer_norm_eps']}; OlmoForCausalLM's LayerNorm uses 1e-05")
    missing = [
        k for k in ("d_model", "n_heads", "n_layers", "vocab_size", "max_sequence_length") if k not in native
    ]
    if missing:
        raise _bad(path, f"missing field(s) {', '.join(missing)}")
    d_model, n_heads = int(native["d_model"]), int(native["n_heads"])
    fused_mlp = native.get("mlp_hidden_size") or d_model * int(native.get("mlp_ratio", 4))
    embedding_size = int(native.get("embedding_size") or native["vocab_size"])
    if embedding_size < int(native["vocab_size"]):
        raise _bad(path, f"embedding_size={embedding_size} is smaller than vocab_size={native['vocab_size']}")
    return OlmoConfig(
        vocab_size=embedding_size,
        hidden_size=d_model,
        intermediate_size=int(fused_mlp) // 2,
        num_hidden_layers=int(native["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=_kv_heads(native, n_heads, path),
        max_position_embeddings=int(native["max_sequence_length"]),
        pad_token_id=native.get("pad_token_id"),
        bos_token_id=None,
        eos_token_id=native.get("eos_token_id"),
        tie_word_embeddings=bool(native.get("weight_tying", True)),
        rope_parameters={"rope_type": "default", "rope_theta": float(native.get("rope_theta", 10_000))},
        clip_qkv=native.get("clip_qkv"),
    )


def native_olmo_state_dict(
    tensors: dict[str, torch.Tensor], config: OlmoConfig, where: str
) -> dict[str, torch.Tensor]:
    """The ``OlmoForCausalLM`` state dict of native tensors (keys as read, with or without ``model.``).

    Args:
        tensors: Every tensor of the checkpoint's weight files.
        config: From :func:`native_olmo_config`.
        where: The weight file(s), named in errors.

    Raises:
        CheckpointError: naming ``where``: a key is missing or unexpected, or a tensor has the wrong shape.
    """
    native = {key.removeprefix("model."): value for key, value in tensors.items()}
    d, heads = config.hidden_size, config.num_attention_heads
    kv = config.num_key_value_heads or heads
    head_dim, inner = d // heads, config.intermediate_size
    qkv = [d, kv * head_dim, kv * head_dim]
    taken: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in native:
            raise CheckpointError(
                f"{where}: key 'model.{key}' is missing (an OLMo v1 checkpoint of {config.num_hidden_layers} "
                f"layers has it). Fix: download the checkpoint's weight files again."
            )
        tensor = native[key]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{where}: 'model.{key}' has shape {tuple(tensor.shape)}, expected {shape} from config.json. "
                "Fix: the weights and config.json belong to different models; download both again."
            )
        taken.add(key)
        return tensor

    out = {"model.embed_tokens.weight": take("transformer.wte.weight", (config.vocab_size, d))}
    for i in range(config.num_hidden_layers):
        block, layer = f"transformer.blocks.{i}", f"model.layers.{i}"
        q, k, v = take(f"{block}.att_proj.weight", (sum(qkv), d)).split(qkv, dim=0)
        up, gate = take(f"{block}.ff_proj.weight", (2 * inner, d)).chunk(2, dim=0)  # OLMo: x, gate = chunk(2)
        out |= {
            f"{layer}.self_attn.q_proj.weight": q,
            f"{layer}.self_attn.k_proj.weight": k,
            f"{layer}.self_attn.v_proj.weight": v,
            f"{layer}.self_attn.o_proj.weight": take(f"{block}.attn_out.weight", (d, d)),
            f"{layer}.mlp.up_proj.weight": up,
            f"{layer}.mlp.gate_proj.weight": gate,
            f"{layer}.mlp.down_proj.weight": take(f"{block}.ff_out.weight", (d, inner)),
        }
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    else:
        out["lm_head.weight"] = take("transformer.ff_out.weight", (config.vocab_size, d))
    unexpected = sorted(set(native) - taken)
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected key(s) {', '.join('model.' + k for k in unexpected[:5])}"
            f"{' ...' if len(unexpected) > 5 else ''}: this OLMo v1 layout (no biases, no norm weights) has "
            "no place for them, so the weights are not what config.json describes. Fix: download the "
            "checkpoint's config.json and weight files again, from the same revision."
        )
    return out


def _kv_heads(native: dict[str, Any], n_heads: int, path: Path) -> int:
    kv, mqa = native.get("n_kv_heads"), native.get("multi_query_attention")
    if kv is None:
        return 1 if mqa else n_heads
    if mqa is not None and int(kv) != (1 if mqa else n_heads):
        raise _bad(path, f"n_kv_heads={kv} contradicts multi_query_attention={mqa}")
    return int(kv)


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a supported OLMo v1 checkpoint: {problem}. Only OLMo v1 models with OLMo-7B's "
        "architecture (SwiGLU, RoPE, LayerNorm without parameters, no biases) are converted. Fix: use the "
        "repository's transformers-layout release (e.g. allenai/OLMo-7B-hf for the final OLMo-7B), or "
        "convert the checkpoint to the transformers layout once."
    )
