"""The project's tiny suites: built for real at ``micro`` size into a temporary cache (nothing mocked)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from gated_lpi_exp.adapters import FAMILIES
from gated_lpi_exp.checkpoints.manifest import read_manifest
from gated_lpi_exp.data import load_relations
from gated_lpi_exp.errors import CheckpointError, ConfigurationError
from gated_lpi_exp.suites import SuiteSpec, build_suite, suite_dir
from gated_lpi_exp.suites.check import evaluate_checkpoint
from gated_lpi_exp.suites.model import active_ffn_width, attention_shape, model_config
from gated_lpi_exp.suites.spec import FAMILIES as SUITE_FAMILIES
from gated_lpi_exp.suites.tokenizer import check_single_token_objects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on a shared CPU it is as fast as two and far steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro(family: str, cache: Path, **overrides) -> SuiteSpec:
    name = "micro_moe" if family == "olmoe" else "micro_dense"
    return SuiteSpec(name=name, family=family, size="micro", cache_dir=str(cache), **overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Both micro suites, built once for the module."""
    cache = tmp_path_factory.mktemp("suites")
    return {family: build_suite(micro(family, cache), progress=False) for family in ("olmoe", "olmo")}


@pytest.fixture(scope="module")
def facts():
    return load_relations("bundled", template="zs:0")


def weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(step_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical weights: two builds run the same computations in one environment on one torch thread
    (conftest), which is what a deterministic build promises."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_builds_complete_series(built):
    for family, root in built.items():
        manifest = read_manifest(root)
        spec = micro(family, root.parent).resolved()
        assert manifest.complete and manifest.family == family
        assert manifest.config_hash == spec.config_hash()
        assert [e.step for e in manifest.checkpoints] == spec.checkpoint_steps
        assert manifest.checkpoints[0].train_loss is None and manifest.checkpoints[-1].train_loss > 0
        assert manifest.checkpoints[-1].tokens == spec.steps * spec.batch_size * spec.seq_len
        assert not (root / "resume").exists()
        tok = AutoTokenizer.from_pretrained(root / "step0")
        assert tok.pad_token is not None and tok("The", add_special_tokens=False)["input_ids"]


def test_reused_without_retraining(built):
    root = built["olmo"]
    before = {p: p.stat().st_mtime_ns for p in root.glob("step*/model.safetensors")}
    started = time.perf_counter()
    assert build_suite(micro("olmo", root.parent), progress=False) == root
    assert time.perf_counter() - started < 5
    assert {p: p.stat().st_mtime_ns for p in root.glob("step*/model.safetensors")} == before


def test_every_object_is_one_token(built, facts):
    tok = AutoTokenizer.from_pretrained(built["olmoe"] / "step0")
    check_single_token_objects(tok, list(facts["prompt"]), list(facts["object"]))
    prompt, obj = facts["prompt"].iloc[0], facts["object"].iloc[0]
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + " " + obj, add_special_tokens=False)["input_ids"]
    assert full[:-1] == head and tok.decode(full[-1:]) == " " + obj
    with pytest.raises(ConfigurationError, match="not a single token"):
        check_single_token_objects(tok, [prompt], ["zyxwvutsrq qponm"])


def test_pair_is_matched(built):
    cfg = {f: AutoConfig.from_pretrained(root / "step0") for f, root in built.items()}
    assert active_ffn_width(cfg["olmoe"]) == active_ffn_width(cfg["olmo"])
    assert attention_shape(cfg["olmoe"]) == attention_shape(cfg["olmo"])
    assert cfg["olmoe"].output_router_logits and cfg["olmoe"].router_aux_loss_coef > 0
    # Same tokenizer, same data, same schedule: only the FFN differs.
    files = [(root / "step0" / "tokenizer.json").read_bytes() for root in built.values()]
    assert files[0] == files[1]
    steps = [[(e.step, e.tokens) for e in read_manifest(root).checkpoints] for root in built.values()]
    assert steps[0] == steps[1]
    for size in ("tiny", "micro"):
        moe, dense = (
            model_config(SuiteSpec(family=f, size=size).resolved(), 100, 0, 1) for f in ("olmoe", "olmo")
        )
        assert active_ffn_width(moe) == active_ffn_width(dense) and attention_shape(moe) == attention_shape(
            dense
        )
        assert moe.num_experts >= 16 and moe.num_experts_per_tok >= 2
        neox = model_config(SuiteSpec(family="gpt_neox", size=size).resolved(), 100, 0, 1)
        assert active_ffn_width(neox) == active_ffn_width(dense) and attention_shape(neox) == attention_shape(
            dense
        )
        assert neox.use_parallel_residual and neox.attention_bias  # Pythia's block


def test_suite_families_are_adapter_families():
    assert set(SUITE_FAMILIES) <= set(FAMILIES)


def test_learns(built, facts):
    for root in built.values():
        steps = [e.path for e in read_manifest(root).checkpoints]
        first, last = (evaluate_checkpoint(root / s, facts).iloc[0] for s in (steps[0], steps[-1]))
        assert first["category"] == "all"
        assert first["hit@1"] <= 0.2
        assert last["hit@10"] > first["hit@10"] + 0.2 and last["hit@10"] >= 0.3


def test_deterministic(built, tmp_path):
    again = build_suite(micro("olmo", tmp_path), progress=False)
    for entry in read_manifest(again).checkpoints:
        a, b = again / entry.path / "model.safetensors", built["olmo"] / entry.path / "model.safetensors"
        assert a.read_bytes() == b.read_bytes(), entry.path


def test_resumes_interrupted_build(built, tmp_path):
    spec = micro("olmoe", tmp_path)
    root = build_suite(spec, progress=False, stop_after_checkpoint=3)
    with pytest.raises(CheckpointError, match="incomplete"):
        read_manifest(root)
    assert (root / "resume" / "state.pt").is_file()
    assert len(read_manifest(root, require_complete=False).checkpoints) == 3
    # A checkpoint written after the last resume state (interrupted before the manifest) is not trusted.
    steps = spec.resolved().checkpoint_steps
    shutil.copytree(root / f"step{steps[2]}", root / f"step{steps[3]}")
    assert build_suite(spec, progress=False) == root
    manifest = read_manifest(root)
    assert [e.step for e in manifest.checkpoints] == spec.resolved().checkpoint_steps
    for entry in manifest.checkpoints:
        assert_same_weights(root / entry.path, built["olmoe"] / entry.path)
    expected = read_manifest(built["olmoe"]).checkpoints
    assert [e.train_loss for e in manifest.checkpoints] == [e.train_loss for e in expected]


def test_a_damaged_or_changed_suite_is_reported_and_rebuilt_to_the_same_files(tmp_path, caplog):
    """A suite is the tool's own cache: a damaged manifest, a missing step folder or a changed weight file is
    reported and the suite is built again, bit for bit (so results stored for it keep their keys)."""
    spec = micro("olmoe", tmp_path, steps=20, num_checkpoints=3)
    root = build_suite(spec, progress=False)
    recorded = {e.path: e.files for e in read_manifest(root).checkpoints}
    assert all("model.safetensors" in files for files in recorded.values())
    damages = {
        "manifest": lambda: (root / "manifest.json").write_text('{"format": "gated_lpi_exp.suite/1", "check'),
        "missing folder": lambda: shutil.rmtree(root / "step1"),
        "changed weights": lambda: (root / "step20" / "model.safetensors").write_bytes(
            (root / "step20" / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"
        ),
    }
    for name, damage in damages.items():
        damage()
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert build_suite(spec, progress=False) == root, name
        assert f"The suite in {root} cannot be used" in caplog.text and "Building it again" in caplog.text
        assert "delete" not in caplog.text.lower(), name
        assert {e.path: e.files for e in read_manifest(root).checkpoints} == recorded, name


def test_spec_hash_and_location(monkeypatch, tmp_path):
    base = SuiteSpec(family="olmo", size="micro")
    assert base.config_hash() == SuiteSpec(family="olmo", size="micro", cache_dir="/elsewhere").config_hash()
    assert base.config_hash() != SuiteSpec(family="olmo", size="micro", seed=1).config_hash()
    assert base.config_hash() != SuiteSpec(family="olmoe", size="micro").config_hash()
    monkeypatch.setenv("GATED_LPI_CACHE", str(tmp_path / "g"))
    assert suite_dir(base).parent == tmp_path / "g" / "suites"
    monkeypatch.delenv("GATED_LPI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert suite_dir(base).parent == tmp_path / "x" / "gated_lpi_exp" / "suites"
    assert json.dumps(base.to_dict())  # serialisable
    with pytest.raises(ConfigurationError, match="checkpoint_steps"):
        SuiteSpec(size="micro", checkpoint_steps=[5, 240]).resolved()
