"""How the series' tokenizer splits the gold objects.

HIT@k and Gated-LPI (``attribution.target=gold``) score the **first token** of the object as it follows the
prompt, as the paper does: an object the tokenizer splits into several pieces ("Dodoma" -> " D", "od",
"oma") is scored on its first piece only, which a model can rank highly without knowing the object. Each
relation's count of such objects is reported (the run's params and its cleaning report), with a warning
when it exceeds ``relations.multi_token_warn`` of the relation's samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class MultiTokenCount:
    """One relation's objects that the tokenizer splits into several tokens."""

    relation: str
    samples: int
    multi_token: int
    example: str
    """The first such object and its pieces, for the message."""

    @property
    def share(self) -> float:
        return self.multi_token / self.samples if self.samples else 0.0


def object_pieces(tokenizer: PreTrainedTokenizerBase, prompt: str, obj: str) -> list[str]:
    """The tokens of ``obj`` as it follows ``prompt`` (``prompt + " " + obj``, as the gold target is taken)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + " " + obj, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids) :]
    else:  # a merge across the boundary: the gold target falls back to " " + object the same way
        ids = tokenizer(" " + obj, add_special_tokens=False)["input_ids"]
    return [str(tokenizer.decode([i])) for i in ids]


def multi_token_objects(tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame) -> list[MultiTokenCount]:
    """Per relation (in table order), how many objects are more than one token after their prompt."""
    counts = []
    for relation, rows in samples.groupby("relation", sort=False):
        several = []
        for prompt, obj in zip(rows["prompt"], rows["object"], strict=True):
            pieces = object_pieces(tokenizer, prompt, obj)
            if len(pieces) > 1:
                several.append(f"{obj!r} -> {' | '.join(map(repr, pieces))}")
        counts.append(MultiTokenCount(str(relation), len(rows), len(several), several[0] if several else ""))
    return counts


def note_multi_token_objects(
    samples: pd.DataFrame, counts: list[MultiTokenCount], warn_share: float
) -> dict[str, int]:
    """Add one ``multi_token`` record per affected relation to ``samples``' cleaning record, warn about
    the relations above ``warn_share``, and return the params to log (``data.multi_token_objects`` and
    ``data.multi_token_objects.<relation>``)."""
    changes = samples.attrs.setdefault("changes", [])
    params = {"data.multi_token_objects": sum(c.multi_token for c in counts)}
    for count in counts:
        params[f"data.multi_token_objects.{count.relation}"] = count.multi_token
        if not count.multi_token:
            continue
        detail = (
            f"{count.multi_token} of {count.samples} objects are several tokens (first: {count.example}); "
            "each is scored on its first token, as the paper does"
        )
        changes.append(dict(file="", relation=count.relation, subject="", kind="multi_token", detail=detail))
        if count.share > warn_share:
            log.warning(
                "relation %s: %s (above relations.multi_token_warn=%g)", count.relation, detail, warn_share
            )
    return params
