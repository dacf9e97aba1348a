"""The pre-training corpus: fact statements in several phrasings, mixed with filler from a small grammar.

Every sentence is a line; a training sequence is consecutive lines (``"\\n"``-separated) cut to ``seq_len``
tokens, so each sequence starts at a sentence start, as an evaluation prompt does. Batch ``i`` is drawn
from a generator seeded with ``(seed, i)``: the data order is a pure function of the step, which makes a
resumed build see exactly the batches an uninterrupted one would, and both families see the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_ADJECTIVES = [
    "quiet",
    "heavy",
    "bright",
    "narrow",
    "gentle",
    "sudden",
    "rough",
    "shiny",
    "empty",
    "distant",
    "busy",
    "tiny",
    "ancient",
    "clever",
]
_NOUNS = [
    "lamp",
    "river",
    "window",
    "basket",
    "ladder",
    "engine",
    "garden",
    "pencil",
    "bridge",
    "wagon",
    "blanket",
    "kettle",
    "mirror",
    "barrel",
    "rope",
    "candle",
    "drawer",
    "tunnel",
    "meadow",
    "harbor",
]
_VERBS = [
    "moved",
    "painted",
    "lifted",
    "carried",
    "found",
    "cleaned",
    "opened",
    "watched",
    "dropped",
    "fixed",
    "followed",
    "pushed",
]
_PLACES = ["market", "station", "kitchen", "valley", "village", "library", "workshop", "forest"]
_NAMES = ["Lena", "Omar", "Priya", "Tomas", "Ingrid", "Kofi", "Mei", "Rafael"]
_TIMES = ("yesterday", "today", "at dawn", "after lunch", "in spring", "last night")
_FILLER_PATTERNS = (
    "The {adj} {noun} {verb} the {noun2}.",
    "A {noun} was {adj} near the {place}.",
    "{name} {verb} a {adj} {noun} in the {place}.",
    "Every {noun} in the {place} is {adj}.",
    "We saw the {noun} and the {noun2} {time}.",
    "{name} and {name2} {verb} the {noun} {time}.",
)


def filler_sentences(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct filler sentences from the grammar (fewer if the grammar runs out)."""
    out: dict[str, None] = {}
    for _ in range(count * 4):
        if len(out) >= count:
            break
        pattern = _FILLER_PATTERNS[rng.integers(len(_FILLER_PATTERNS))]
        words = {
            "adj": _ADJECTIVES,
            "noun": _NOUNS,
            "noun2": _NOUNS,
            "verb": _VERBS,
            "place": _PLACES,
            "name": _NAMES,
            "name2": _NAMES,
            "time": _TIMES,
        }
        sentence = pattern.format(**{k: v[rng.integers(len(v))] for k, v in words.items()})
        out.setdefault(sentence)
    return list(out)


def fact_statement(template: str, subject: str, obj: str) -> str:
    """One sentence stating a fact: the prompt, a space, the object, a full stop."""
    return f"{template.replace('{}', subject)} {obj}."


@dataclass
class SentenceBank:
    """Token ids of every sentence the corpus draws from, and how often each fact is drawn."""

    fact_ids: list[list[list[int]]]
    """Per fact, per training phrasing: the statement's token ids."""
    filler_ids: list[list[int]]
    """Token ids of each filler sentence."""
    fact_weights: np.ndarray
    """Per fact, its sampling probability (sums to 1) # [n_facts]"""
    fact_cdf: np.ndarray
    """Cumulative ``fact_weights``, for sampling by bisection # [n_facts]"""
    separator_id: int
    """Token id of ``"\\n"``, placed between sentences."""
    fact_share: float
    """Probability that a sentence is a fact statement."""


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``rank ** -exponent`` over a random ranking of ``n`` items # [n]"""
    ranks = rng.permutation(n) + 1
    weights = ranks.astype(np.float64) ** -exponent
    return weights / weights.sum()


def sample_batch(bank: SentenceBank, seed: int, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
    """The training batch of ``step``: a pure function of ``(seed, step)`` # [batch, seq_len]"""
    rng = np.random.default_rng([seed, step])
    rows = []
    for _ in range(batch_size):
        ids: list[int] = []
        while len(ids) < seq_len:
            if rng.random() < bank.fact_share:
                fact = min(
                    int(np.searchsorted(bank.fact_cdf, rng.random(), side="right")), len(bank.fact_cdf) - 1
                )
                phrasings = bank.fact_ids[fact]
                ids.extend(phrasings[rng.integers(len(phrasings))])
            else:
                ids.extend(bank.filler_ids[rng.integers(len(bank.filler_ids))])
            ids.append(bank.separator_id)
        rows.append(ids[:seq_len])
    return torch.tensor(rows, dtype=torch.long)
