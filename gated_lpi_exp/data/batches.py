"""Tokenised, padded prompt batches with their target tokens."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from gated_lpi_exp.attribution import gold_targets


@dataclass
class PromptBatch:
    """A slice of the run's examples, tokenised and right-padded."""

    rows: pd.DataFrame
    """The examples' rows of the samples table."""
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    gold_ids: torch.Tensor  # [batch]


def prompt_batches(
    tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame, batch_size: int, device: torch.device
) -> Iterator[PromptBatch]:
    """Yield right-padded batches of ``samples`` in table order, with gold target tokens."""
    for lo in range(0, len(samples), batch_size):
        rows = samples.iloc[lo : lo + batch_size]
        prompts, objects = rows["prompt"].tolist(), rows["object"].tolist()
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
        yield PromptBatch(
            rows=rows,
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            gold_ids=gold_targets(tokenizer, prompts, objects).to(device),
        )


def token_fingerprint(tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame) -> str:
    """sha256 of what the model is given for ``samples``, in table order: each prompt's token ids and its
    gold target token, and the padding token.

    This is the tokenizer's whole effect on a result, so cached results are keyed by it: another tokenizer
    (or the same one with another vocabulary or normalisation) and another sample order give another
    fingerprint, while an identical tokenizer saved elsewhere gives the same one.
    """
    prompts, objects = samples["prompt"].tolist(), samples["object"].tolist()
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stages warn about fallback targets when they use them
        gold = gold_targets(tokenizer, prompts, objects).tolist()
    payload = {"pad": tokenizer.pad_token_id, "rows": [[list(i), g] for i, g in zip(ids, gold, strict=True)]}
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()
