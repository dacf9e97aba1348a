"""Positions, targets and the model's own last-token logits (padding-safe)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """Index of the last non-padding token of each row (works for left and right padding).

    Args:
        attention_mask: ``[batch, seq]`` 1 for tokens, 0 for padding.

    Returns:
        ``[batch]`` long tensor ``T``.
    """
    seq = attention_mask.shape[1]
    positions = torch.arange(seq, device=attention_mask.device).expand_as(attention_mask)  # [batch, seq]
    # -1 on padding so the max lands on the last real token wherever the padding sits.
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that ignore padding: ``cumsum(mask) - 1`` clamped at 0.

    Passing these keeps RoPE positions of a left-padded example equal to the example alone.

    Args:
        attention_mask: ``[batch, seq]``.

    Returns:
        ``[batch, seq]`` long tensor.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _forward_inputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
    device = model.get_input_embeddings().weight.device
    attention_mask = attention_mask.to(device)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }


@torch.no_grad()
def final_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The model's own next-token logits at the last non-padding token, in float32.

    Args:
        model: A causal LM.
        input_ids: ``[batch, seq]``.
        attention_mask: ``[batch, seq]``.

    Returns:
        ``[batch, vocab]`` float32.
    """
    inputs = _forward_inputs(model, input_ids, attention_mask)
    last = last_token_positions(inputs["attention_mask"])  # [batch]
    # A [batch, 1] position tensor makes the model unembed only T, never the [batch, seq, vocab] logits.
    logits = model(**inputs, logits_to_keep=last[:, None]).logits  # [batch, 1, vocab]
    return logits[:, 0].float()


def predicted_targets(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``target=predicted``: the model's own top-1 token at T.

    Returns:
        ``[batch]`` long tensor.
    """
    return final_logits(model, input_ids, attention_mask).argmax(dim=-1)


def gold_targets(tokenizer, prompts: list[str], objects: list[str]) -> Tensor:
    """``target=gold``: the first token of the object as it follows the prompt.

    Tokenises ``prompt + " " + object`` and takes the first token after the prompt's own tokens (both without
    special tokens, so a BOS/EOS the tokenizer adds cannot break the prefix). Where the prompt's ids are not
    a prefix (a merge across the boundary), falls back to the first token of ``" " + object`` and warns once.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prompts: The prompts, one per example.
        objects: The gold objects, aligned with ``prompts``.

    Returns:
        ``[batch]`` long tensor of token ids.
    """
    if len(prompts) != len(objects):
        raise ValueError(f"{len(prompts)} prompts but {len(objects)} objects")
    targets, fallbacks = [], []
    for prompt, obj in zip(prompts, objects, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + " " + obj, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            targets.append(full_ids[len(prompt_ids)])
            continue
        object_ids = tokenizer(" " + obj, add_special_tokens=False)["input_ids"]
        if not object_ids:
            raise ValueError(f"object {obj!r} tokenises to nothing")
        targets.append(object_ids[0])
        fallbacks.append(prompt)
    if fallbacks:
        warnings.warn(
            f"gold target: prompt tokens are not a prefix of prompt + object for {len(fallbacks)} example(s) "
            f"(first: {fallbacks[0]!r}); used the first token of ' ' + object instead",
            stacklevel=2,
        )
    return torch.tensor(targets, dtype=torch.long)
