"""Tokenised, padded prompt batches with their target tokens."""

from __future__ import annotations

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
