"""Tiny random-weight models and tokenizers for tests and demos (nothing downloaded).

These are real ``transformers`` models built from small configs; the project's trained tiny suites live in
``gated_lpi_exp.suites``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    OlmoConfig,
    OlmoeConfig,
    OlmoeForCausalLM,
    OlmoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

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
"""Dimensions both tiny random families share (the attention shape matches, as in the project's suites)."""


def _build(config_cls, model_cls, seed: int, **cfg):
    torch.manual_seed(seed)
    config = config_cls(**{**_SHARED, **cfg})
    config._attn_implementation = "eager"
    return model_cls(config).float().eval()


def random_olmoe(vocab_size: int = 97, seed: int = 0, **overrides) -> OlmoeForCausalLM:
    """A tiny OLMoE (fused experts) with random float32 weights and eager attention."""
    cfg = {
        **dict(vocab_size=vocab_size, intermediate_size=16, num_experts=8, num_experts_per_tok=2),
        **overrides,
    }
    model = _build(OlmoeConfig, OlmoeForCausalLM, seed, **cfg)
    _spread_norm_gains(model, seed)
    return model


def random_olmo(vocab_size: int = 97, seed: int = 0, **overrides) -> OlmoForCausalLM:
    """A tiny OLMo (non-parametric LayerNorm) with random float32 weights and eager attention."""
    cfg = {**dict(vocab_size=vocab_size, intermediate_size=48), **overrides}
    model = _build(OlmoConfig, OlmoForCausalLM, seed, **cfg)
    # Random init uses std 0.02, which makes every score tiny; widen it so tests see real signal.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
    return model


def _spread_norm_gains(model: PreTrainedModel, seed: int) -> None:
    """Random RMSNorm gains (init is all ones) and wider weights, so gain bugs cannot hide."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(10.0)
            elif name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))


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
    make = {"olmoe": random_olmoe, "olmo": random_olmo}[family]
    entries = []
    for i, step in enumerate(steps):
        model = make(vocab_size=len(tokenizer), seed=i, **overrides)
        folder = root / f"step{step}"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        entries.append(ManifestEntry(step=step, tokens=step * 64, train_loss=None, path=f"step{step}"))
    write_manifest(
        root, Manifest(name=name, family=family, config_hash="random", complete=True, checkpoints=entries)
    )
    return root
