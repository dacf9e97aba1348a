"""The result store's and the attribution cache's keys cover everything that determines an entry: change
one input and the stale entry is not used; rebuild the same files and it is."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from scale_helpers import bundled_tokenizer, make_series, overrides, result_store

from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer, resolve_series
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.config import AttributionConfig
from gated_lpi_exp.data import BUNDLED_DIR, dataset_hash
from gated_lpi_exp.data.batches import token_fingerprint
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.run import load_samples, run
from gated_lpi_exp.stages.attribution import relation_key
from gated_lpi_exp.storage.arrays import content_key
from gated_lpi_exp.storage.results import ResultStore
from gated_lpi_exp.testing import word_tokenizer


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    cfg = compose_run_config(overrides(make_series(root / "series", [0, 10]), root / "work"))
    series = resolve_series(cfg.model, cfg.checkpoints)
    tokenizer = load_tokenizer(cfg.model, series.checkpoints[0])
    return dict(root=root, cfg=cfg, checkpoint=series.checkpoints[1], tokenizer=tokenizer)


def _result_key(setting, samples: pd.DataFrame, tokenizer=None) -> str:
    tokenizer = tokenizer or setting["tokenizer"]
    store = ResultStore(setting["cfg"], dataset_hash(samples), token_fingerprint(tokenizer, samples))
    return store.key(setting["checkpoint"])


def _relation_key(setting, rows: pd.DataFrame, tokenizer=None) -> str:
    tokenizer = tokenizer or setting["tokenizer"]
    fingerprint = token_fingerprint(tokenizer, rows)
    return content_key(relation_key(setting["checkpoint"], "float32", rows, AttributionConfig(), fingerprint))


def _samples(setting) -> pd.DataFrame:
    return load_samples(setting["cfg"])


def test_a_relation_moved_to_another_category_gets_new_result_keys(setting):
    samples = _samples(setting)
    moved = samples.assign(
        category=samples["category"].where(samples["relation"] != "adjective_antonym", "bias")
    )
    assert _result_key(setting, moved) != _result_key(setting, samples)


def test_another_template_gets_new_keys_even_with_the_same_prompts(setting):
    samples = _samples(setting)
    other = samples.assign(template=samples["template"] + " ")  # same prompts, another template
    assert _result_key(setting, other) != _result_key(setting, samples)
    rows = samples[samples["relation"] == samples["relation"].iloc[0]]
    assert _relation_key(setting, rows.assign(template=rows["template"] + " ")) != _relation_key(
        setting, rows
    )


def test_renumbered_or_reordered_samples_get_new_keys(setting):
    samples = _samples(setting)
    renumbered = samples.assign(sample_id=samples.groupby("relation").cumcount(ascending=False))
    assert _result_key(setting, renumbered) != _result_key(setting, samples)  # held-out halves change
    reordered = samples.iloc[::-1].reset_index(drop=True)  # other batches
    assert _result_key(setting, reordered) != _result_key(setting, samples)
    rows = samples[samples["relation"] == samples["relation"].iloc[0]]
    assert _relation_key(setting, rows.iloc[::-1]) != _relation_key(setting, rows)


def test_another_tokenizer_gets_new_keys_and_the_same_one_saved_elsewhere_does_not(setting, tmp_path):
    samples = _samples(setting)
    words = sorted(bundled_tokenizer().get_vocab(), reverse=True)  # the same words, other ids
    other = word_tokenizer(w for w in words if not w.startswith("<"))
    rows = samples[samples["relation"] == samples["relation"].iloc[0]]
    assert _result_key(setting, samples, other) != _result_key(setting, samples)
    assert _relation_key(setting, rows, other) != _relation_key(setting, rows)
    setting["tokenizer"].save_pretrained(tmp_path / "copy")
    copy = load_tokenizer(setting["cfg"].model, Checkpoint(step=0, source=str(tmp_path / "copy")))
    assert _result_key(setting, samples, copy) == _result_key(setting, samples)


def test_weights_are_keyed_by_content_not_by_modification_time(setting, tmp_path):
    """Row 11/12 of the issue: 4 KiB of valid floats copied inside a checkpoint's weights give another key
    and fail the manifest's checksum; the same bytes written again (a rebuilt suite) keep the key."""
    cfg = setting["cfg"]
    series = tmp_path / "series"
    shutil.copytree(cfg.model.source, series)
    local = compose_run_config(overrides(series, setting["root"] / "work"))
    store = result_store(local)
    checkpoint = resolve_series(local.model, local.checkpoints).checkpoints[1]
    key = store.key(checkpoint)
    weights = series / "step10" / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data)  # rewritten bit for bit: new inode and times, same content
    os.utime(weights, ns=(1, 1))
    assert store.key(checkpoint) == key
    blob = bytearray(data)
    header = 8 + int.from_bytes(data[:8], "little")
    blob[header + 4096 : header + 8192] = blob[header : header + 4096]  # valid floats, other values
    weights.write_bytes(bytes(blob))
    assert store.key(checkpoint) != key
    with pytest.raises(CheckpointError, match="model.safetensors differ from the sha256 recorded"):
        load_checkpoint(local.model, checkpoint)
    unchecked = compose_run_config(
        [*overrides(series, setting["root"] / "work"), "model.verify_checksums=false"]
    )
    assert load_checkpoint(unchecked.model, checkpoint) is not None  # the user's explicit choice


@pytest.mark.slow
def test_a_relation_moved_to_another_category_is_reported_under_it_on_the_next_run(setting, tmp_path):
    """Row 3 of the issue, end to end: folder and relation_type changed, the rerun reports the new category."""
    data = tmp_path / "data"
    shutil.copytree(BUNDLED_DIR, data, ignore=shutil.ignore_patterns("*.md"))
    args = [
        *overrides(setting["cfg"].model.source, tmp_path / "work"),
        f"relations.source={data}",
        "relations.names=[adjective_antonym,country_capital_city]",
        "attribution.enabled=false",
    ]
    first = run(compose_run_config(args))
    moved = data / "bias" / "adjective_antonym.json"
    shutil.move(data / "linguistic" / "adjective_antonym.json", moved)
    doc = json.loads(moved.read_text())
    doc.setdefault("properties", {})["relation_type"] = "bias"
    moved.write_text(json.dumps(doc))
    second = run(compose_run_config(args))
    for result, category in ((first, "linguistic"), (second, "bias")):
        examples = result.tables["example_hits"]
        assert set(examples.loc[examples["relation"] == "adjective_antonym", "category"]) == {category}
        groups = set(result.tables["hit_summary"].query("scope == 'category'")["group"])
        assert groups == {category, "factual"}
