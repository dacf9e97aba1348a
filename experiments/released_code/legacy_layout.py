"""The tiny models of the cross-check, written in the transformers 4.46 layout the released code loads.

transformers >= 5 keeps an OLMoE layer's experts fused (``gate_up_proj [E, 2*d_e, d]``, gate rows first;
``down_proj [E, d, d_e]``); 4.46 keeps one module per expert (``experts.{e}.gate_proj / up_proj / down_proj``).
The released MoE block hard-codes an expert width of 1024, so the tiny OLMoE's experts are 1024 wide.
OLMo's layout is the same in both releases. Configs are written by hand with the fields 4.46 reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from gated_lpi_exp.testing import random_olmo, random_olmoe, word_tokenizer

RELEASED_EXPERT_WIDTH = 1024
"""``e_dim`` hard-coded in the released ``OlmoeSparseMoeBlock``."""
PROMPTS = [
    "the capital city of france is",
    "a ripe banana is usually colored",
    "the opposite of hot is",
    "the first letter of apple is",
    "nurses usually work in a",
    "people in brazil mostly speak",
]
"""Prompts of 4 to 6 tokens, relational like the paper's, over a word-level vocabulary."""
_OBJECTS = ["paris", "yellow", "cold", "a", "hospital", "portuguese", "green", "school", "berlin", "warm"]


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the prompts' words and their objects."""
    words = [w for p in PROMPTS for w in p.split()] + _OBJECTS
    return word_tokenizer(words)


def tiny_olmoe(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """3 layers, d 64, 4 heads, 8 experts of width 1024, top-3; float32 random weights (eager attention)."""
    return random_olmoe(
        vocab_size=vocab_size,
        seed=seed,
        hidden_size=64,
        num_hidden_layers=3,
        intermediate_size=RELEASED_EXPERT_WIDTH,
        num_experts=8,
        num_experts_per_tok=3,
    )


def tiny_olmo(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """3 layers, d 64, 4 heads, FFN 256; float32 random weights (eager attention)."""
    return random_olmo(
        vocab_size=vocab_size, seed=seed, hidden_size=64, num_hidden_layers=3, intermediate_size=256
    )


def save_legacy(model: PreTrainedModel, folder: Path, tok: PreTrainedTokenizerFast) -> Path:
    """Write ``model`` (transformers 5 layout) and ``tok`` as a transformers 4.46 checkpoint folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = legacy_state_dict(model)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), {"format": "pt"}
    )
    (folder / "config.json").write_text(json.dumps(legacy_config(model), indent=2))
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": tok.pad_token, "eos_token": tok.eos_token, "unk_token": tok.unk_token}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def legacy_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The 4.46 state dict: fused expert weights split into one gate/up/down per expert."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("mlp.experts.gate_up_proj"):
            prefix = key.removesuffix("gate_up_proj")
            gate, up = _untransposed(model, key, value).chunk(2, dim=1)  # [E, d_e, d] each
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = gate[e]
                out[f"{prefix}{e}.up_proj.weight"] = up[e]
        elif key.endswith("mlp.experts.down_proj"):
            prefix = key.removesuffix("down_proj")
            down = _untransposed(model, key, value)  # [E, d, d_e]
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = down[e]
        else:
            out[key] = value
    return out


def _untransposed(model: PreTrainedModel, key: str, value: torch.Tensor) -> torch.Tensor:
    experts = model.get_submodule(key.rsplit(".", 1)[0])
    return value.transpose(1, 2) if getattr(experts, "is_transposed", False) else value


def legacy_config(model: PreTrainedModel) -> dict:
    """The fields transformers 4.46's ``OlmoeConfig`` / ``OlmoConfig`` read, from a 5.x config."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    shared = {
        "model_type": cfg.model_type,
        "architectures": [type(model).__name__],
        **{
            k: getattr(cfg, k)
            for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        },
        **{
            k: getattr(cfg, k)
            for k in ("num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        },
        **{k: getattr(cfg, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id", "initializer_range")},
        "hidden_act": cfg.hidden_act,
        "tie_word_embeddings": False,
        "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": cfg.clip_qkv,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
    }
    if cfg.model_type == "olmoe":
        moe = ("num_experts", "num_experts_per_tok", "norm_topk_prob", "rms_norm_eps", "router_aux_loss_coef")
        shared.update({k: getattr(cfg, k) for k in moe} | {"output_router_logits": False})
    return shared
