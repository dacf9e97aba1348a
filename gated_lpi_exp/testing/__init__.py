"""Tiny random-weight models and tokenizers for tests and demos (nothing downloaded).

These are real ``transformers`` models built from small configs; the project's trained tiny suites live in
``gated_lpi_exp.suites``. Beside them: a model-hub protocol server on loopback that serves a local series as a
hub repository (:mod:`.hub_server`, :mod:`.hub_repo`), and a disk sampler (:mod:`.disk`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from gated_lpi_exp.checkpoints.manifest import Manifest, ManifestEntry, write_manifest

_SHARED = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=1,
    tie_word_embeddings=False,
)
"""Dimensions every tiny random family shares (the attention shape matches, as in the project's suites)."""

_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=48)
TINY_SHAPES: dict[str, dict] = {
    "olmoe": dict(intermediate_size=16, num_experts=8, num_experts_per_tok=2),
    "olmo": dict(intermediate_size=48),
    "llama": dict(intermediate_size=48, num_key_value_heads=2),  # grouped-query attention
    "mistral": dict(intermediate_size=48, num_key_value_heads=2),
    "qwen2": dict(intermediate_size=48, num_key_value_heads=2),  # q/k/v biases
    "qwen3": dict(intermediate_size=48, num_key_value_heads=2, head_dim=12),  # heads*head_dim != hidden
    "olmo2": dict(intermediate_size=48),
    "olmo3": dict(intermediate_size=48),
    "gpt_neox": dict(intermediate_size=48),  # parallel residual, biases, LayerNorms with beta
    "mixtral": dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, num_key_value_heads=2),
    "qwen2_moe": dict(_MOE, num_experts=8, shared_expert_intermediate_size=24, norm_topk_prob=False),
    "qwen3_moe": dict(_MOE, num_experts=8, norm_topk_prob=True, head_dim=8),
    "deepseek_v3": dict(
        _MOE,
        n_routed_experts=8,
        n_group=2,
        topk_group=1,
        n_shared_experts=2,
        first_k_dense_replace=1,  # layer 0 dense: a mixed stack
        routed_scaling_factor=2.5,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=6,  # heads*v_head_dim != hidden
        num_key_value_heads=4,
    ),
}
"""A tiny config per ``model_type`` that exercises what distinguishes the family."""


def random_model(family: str, vocab_size: int = 97, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny model of ``family`` (a ``model_type``) with random float32 weights and eager attention.

    Weights are 10x the library's init and norm gains, biases and routing-bias buffers are random, so a
    forgotten gain, bias or scale cannot hide in a test.
    """
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family, **{**_SHARED, **TINY_SHAPES[family], "vocab_size": vocab_size, **overrides}
    )
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).float().eval()
    _spread_parameters(model, seed)
    return model


def random_olmoe(vocab_size: int = 97, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny OLMoE (fused experts) with random float32 weights and eager attention."""
    return random_model("olmoe", vocab_size, seed, **overrides)


def random_olmo(vocab_size: int = 97, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny OLMo (non-parametric LayerNorm) with random float32 weights and eager attention."""
    return random_model("olmo", vocab_size, seed, **overrides)


def _spread_parameters(model: PreTrainedModel, seed: int) -> None:
    """Random norm gains (init is all ones), biases and routing biases, and 10x wider weights.

    The library's std-0.02 init makes every score tiny; widened weights give tests real signal.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
            elif name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.2 * torch.rand(buffer.shape, generator=gen))


def word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` (plus <pad>, <eos>, <unk>)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def bundled_word_tokenizer() -> PreTrainedTokenizerFast:
    """A word tokenizer over every word of the bundled relations' prompts and objects."""
    from gated_lpi_exp.data import load_relations

    samples = load_relations("bundled")
    words = {w for text in samples["prompt"].tolist() + samples["object"].tolist() for w in text.split()}
    return word_tokenizer(sorted(words))


def save_random_series(
    root: str | Path,
    family: str,
    steps: Iterable[int],
    tokenizer: PreTrainedTokenizerFast,
    *,
    name: str = "random",
    **overrides,
) -> Path:
    """Save a series of random checkpoints (``step{N}/`` + manifest) as a local suite would be laid out."""
    root = Path(root)
    entries = []
    for i, step in enumerate(steps):
        model = random_model(family, vocab_size=len(tokenizer), seed=i, **overrides)
        folder = root / f"step{step}"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        entries.append(ManifestEntry(step=step, tokens=step * 64, train_loss=None, path=f"step{step}"))
    write_manifest(
        root, Manifest(name=name, family=family, config_hash="random", complete=True, checkpoints=entries)
    )
    return root
