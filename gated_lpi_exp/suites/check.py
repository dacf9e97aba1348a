"""A minimal HIT@k check of a suite's checkpoints (for building, tests and the README).

The project's real evaluation stage lives elsewhere; this one only answers "did the suite learn?". The gold
target is the object's token after the prompt (one token by construction of the suite's tokenizer), read
from the model's real next-token logits at the prompt's last token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp import metrics
from gated_lpi_exp.checkpoints.manifest import read_manifest
from gated_lpi_exp.suites.model import quiet_transformers


@torch.no_grad()
def gold_ranks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    objects: list[str],
    batch_size: int = 64,
) -> np.ndarray:
    """Rank of each gold object token among the next-token logits (1 = top-1) # [n]"""
    ranks = []
    for i in range(0, len(prompts), batch_size):
        chunk_p, chunk_o = prompts[i : i + batch_size], objects[i : i + batch_size]
        enc = tokenizer(chunk_p, add_special_tokens=False, padding=True, return_tensors="pt")
        gold = torch.tensor([_gold_id(tokenizer, p, o) for p, o in zip(chunk_p, chunk_o, strict=True)])  # [b]
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits  # [b, pos, V]
        last = enc["attention_mask"].sum(dim=1) - 1  # [b]; right padding: last real token
        final = logits[torch.arange(len(chunk_p)), last].float()  # [b, V]
        ranks.append(metrics.gold_ranks(final, gold))  # [b]
    return np.concatenate(ranks)


def _gold_id(tokenizer: PreTrainedTokenizerBase, prompt: str, obj: str) -> int:
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt + " " + obj, add_special_tokens=False)["input_ids"][len(head)]


def evaluate_checkpoint(
    step_dir: str | Path, facts: pd.DataFrame, ks: tuple[int, ...] = (1, 10)
) -> pd.DataFrame:
    """HIT@k of one checkpoint, overall (``category="all"``) and per category.

    Args:
        step_dir: A ``step{N}`` folder (model + tokenizer).
        facts: Rows with ``prompt``, ``object`` and ``category`` (e.g. ``load_relations(..., "zs:0")``).

    Returns:
        One row per category plus ``all``: ``category, n, hit@1, hit@10`` (one column per k).
    """
    tokenizer = AutoTokenizer.from_pretrained(step_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(step_dir, dtype=torch.float32).eval()
    ranks = gold_ranks(model, tokenizer, list(facts["prompt"]), list(facts["object"]))
    table = pd.DataFrame({"category": list(facts["category"]), "rank": ranks})
    rows = []
    for category, group in [("all", table), *table.groupby("category", sort=False)]:
        row = {"category": category, "n": len(group)}
        row.update({f"hit@{k}": metrics.hit_rate(group["rank"], k) for k in ks})
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_suite(root: str | Path, facts: pd.DataFrame, ks: tuple[int, ...] = (1, 10)) -> pd.DataFrame:
    """HIT@k of every checkpoint of a complete suite: ``step, tokens, category, n, hit@k...``."""
    root = Path(root)
    frames = []
    for entry in read_manifest(root).checkpoints:
        with quiet_transformers():
            frame = evaluate_checkpoint(root / entry.path, facts, ks)
        frame.insert(0, "tokens", entry.tokens)
        frame.insert(0, "step", entry.step)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
