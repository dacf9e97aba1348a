"""The attribution stage: batches span relations, sums split back per relation, cache reused per relation."""

from __future__ import annotations

import numpy as np

from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import AttributionConfig
from gated_lpi_exp.data import load_relations, select_relations
from gated_lpi_exp.stages.attribution import attribute_checkpoint
from gated_lpi_exp.testing import random_olmoe, word_tokenizer


def _setup():
    samples = load_relations("bundled")
    samples = select_relations(samples, names=["country_capital_city", "adjective_antonym", "name_religion"])
    samples = samples.groupby("relation", sort=False).head(5).reset_index(drop=True)
    words = sorted({w for t in samples["prompt"].tolist() + samples["object"].tolist() for w in t.split()})
    tok = word_tokenizer(words)
    return samples, tok, random_olmoe(vocab_size=len(tok), seed=5)


def test_cross_relation_batches_equal_per_relation_batches_and_partial_cache_is_reused(tmp_path):
    samples, tok, model = _setup()
    ckpt = Checkpoint(step=3, source="random-olmoe")
    wide = AttributionConfig(batch_size=64, use_cache=False)
    narrow = AttributionConfig(batch_size=2, use_cache=False)
    a = attribute_checkpoint(model, tok, samples, ckpt, wide)
    b = attribute_checkpoint(model, tok, samples, ckpt, narrow)
    for rel in a.sums:
        assert (a.sums[rel].counts == b.sums[rel].counts).all() and a.sums[rel].counts.sum() == 5
        for kind, arr in a.sums[rel].sums.items():
            np.testing.assert_allclose(arr, b.sums[rel].sums[kind], atol=1e-5)
    # A per-relation sum equals the plain sum over that relation's examples computed alone.
    alone = attribute_checkpoint(model, tok, samples[samples["relation"] == "name_religion"], ckpt, narrow)
    np.testing.assert_allclose(
        alone.sums["name_religion"].sums["heads"], a.sums["name_religion"].sums["heads"], atol=1e-5
    )

    cached = AttributionConfig(batch_size=4, cache_dir=str(tmp_path))
    first = attribute_checkpoint(
        model, tok, samples[samples["relation"] != "adjective_antonym"], ckpt, cached
    )
    assert (first.cached_relations, first.computed_relations) == (0, 2)
    second = attribute_checkpoint(model, tok, samples, ckpt, cached)
    assert (second.cached_relations, second.computed_relations) == (2, 1)
    np.testing.assert_allclose(second.aggregate.ffn, a.aggregate.ffn, atol=1e-5)
    assert list(second.aggregate.per_relation) == list(samples["relation"].unique())
