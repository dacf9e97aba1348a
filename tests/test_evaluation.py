"""HIT@k on a tiny real model against a hand computation, and its summaries."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from gated_lpi_exp.metrics import gold_ranks
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint, hit_metrics, summarise_hits
from gated_lpi_exp.testing import random_olmoe, word_tokenizer

ROWS = [
    ("country_capital_city", "factual", "France", "Paris", "The capital of France is"),
    ("country_capital_city", "factual", "Peru", "Lima", "The capital of Peru is"),
    ("word_first_letter", "linguistic", "apple", "a", "The word apple starts with the letter"),
    ("adjective_antonym", "linguistic", "hot", "cold", "The opposite of hot is"),
    ("word_first_letter", "linguistic", "zebra", "z", "zebra begins with"),
]


@pytest.fixture
def setup():
    samples = pd.DataFrame(ROWS, columns=["relation", "category", "subject", "object", "prompt"])
    samples["sample_id"] = samples.groupby("relation").cumcount()
    words = sorted(
        {w for text in samples["prompt"].tolist() + samples["object"].tolist() for w in text.split()}
    )
    tok = word_tokenizer(words)
    model = random_olmoe(vocab_size=len(tok), seed=3)
    return samples, tok, model


def test_gold_rank_counts_strictly_greater_logits():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.9], [3.0, 1.0, 2.0, 0.0]])
    assert gold_ranks(logits, torch.tensor([2, 0])).tolist() == [3, 1]
    assert gold_ranks(logits, torch.tensor([1, 3])).tolist() == [1, 4]  # a tie does not push the target down


def test_hit_at_k_equals_a_hand_computation_on_unpadded_single_prompts(setup):
    samples, tok, model = setup
    expected = []
    for prompt, obj in zip(samples["prompt"], samples["object"], strict=True):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model(input_ids=ids).logits[0, -1]  # [vocab], no padding anywhere
        gold = tok.convert_tokens_to_ids(obj)
        expected.append(int((last > last[gold]).sum()) + 1)
    for batch_size in (1, 2, 5):  # batch composition and right padding must not matter
        hits = evaluate_checkpoint(model, tok, samples, step=7, batch_size=batch_size)
        assert hits["gold_rank"].tolist() == expected
        assert hits["target_id"].tolist() == [tok.convert_tokens_to_ids(o) for o in samples["object"]]


def test_summaries_by_hand():
    hits = pd.DataFrame(
        {
            "step": [5] * 4,
            "relation": ["a", "a", "b", "b"],
            "category": ["factual", "factual", "bias", "bias"],
            "sample_id": [0, 1, 0, 1],
            "target_id": [1, 2, 3, 4],
            "gold_rank": [1, 3, 12, 10],
        }
    )
    summary = summarise_hits(hits, [1, 10])
    metrics = hit_metrics(summary, 5)
    assert metrics["hit_at_1"] == 0.25 and metrics["hit_at_10"] == 0.75
    assert metrics["hit_at_1.factual"] == 0.5 and metrics["hit_at_10.bias"] == 0.5
    by_relation = summary[(summary["scope"] == "relation") & (summary["k"] == 10)].set_index("group")["hit"]
    assert by_relation.to_dict() == {"a": 1.0, "b": 0.5}
