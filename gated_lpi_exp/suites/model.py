"""Build a suite's untrained model: ``OlmoeForCausalLM``, ``OlmoForCausalLM`` or ``GPTNeoXForCausalLM``.

The families share vocabulary, width, depth and attention shape; the FFN differs only in how its active
width per token is spent: one dense FFN of ``ffn_width`` (OLMo, GPT-NeoX) or the top-k of ``num_experts``
experts of ``ffn_width / k`` each (OLMoE), with the router's load-balancing loss on. The GPT-NeoX suite mirrors
Pythia: parallel residual, LayerNorms with bias, biased projections, GELU, rotary on a quarter of each head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    OlmoConfig,
    OlmoeConfig,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from gated_lpi_exp.suites.spec import SuiteSpec


def model_config(spec: SuiteSpec, vocab_size: int, pad_id: int, eos_id: int) -> PreTrainedConfig:
    """The transformers config of a (resolved) spec."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=max(256, spec.seq_len),
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    if spec.head_dim:  # heads x head_dim may exceed the width; unset, transformers derives hidden / heads
        common["head_dim"] = spec.head_dim
    if spec.family == "olmoe":
        return OlmoeConfig(
            intermediate_size=spec.expert_neurons,
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.experts_per_token,
            output_router_logits=True,
            router_aux_loss_coef=spec.router_aux_loss_coef,
            norm_topk_prob=False,
            **common,
        )
    if spec.family == "gpt_neox":
        return GPTNeoXConfig(
            intermediate_size=spec.ffn_width,
            use_parallel_residual=True,
            hidden_act="gelu",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            attention_bias=True,
            hidden_dropout=0.0,
            **{k: v for k, v in common.items() if k != "num_key_value_heads"},
        )
    return OlmoConfig(intermediate_size=spec.ffn_width, clip_qkv=None, **common)


def init_model(spec: SuiteSpec, vocab_size: int, pad_id: int, eos_id: int) -> PreTrainedModel:
    """A freshly initialised float32 model, seeded with ``spec.seed``."""
    config = model_config(spec, vocab_size, pad_id, eos_id)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.train()


def active_ffn_width(config: PreTrainedConfig) -> int:
    """FFN neurons a token uses per layer: ``intermediate_size`` (dense) or top-k x expert width (MoE)."""
    return config.intermediate_size * getattr(config, "num_experts_per_tok", 1)


def attention_shape(config: PreTrainedConfig) -> tuple[int, int, int, int]:
    """``(layers, heads, head_dim, hidden)``: what must match between a suite's two families."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (config.num_hidden_layers, heads, head_dim, config.hidden_size)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars (weight loading/saving) inside a build or a check."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
