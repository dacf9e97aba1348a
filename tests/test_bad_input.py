"""Bad input through the real CLI: one clear message naming the problem and the fix, no traceback, and
nothing already computed lost. Plus the out-of-memory retry of the attribution stage."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from scale_helpers import bundled_tokenizer, cli_env, make_series, overrides, result_store, runs_of

from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer, resolve_series
from gated_lpi_exp.checkpoints.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.execution.retry import retry_out_of_memory
from gated_lpi_exp.run import load_samples, run
from gated_lpi_exp.stages.attribution import attribute_checkpoint
from gated_lpi_exp.testing import random_olmo

DRIVER = textwrap.dedent(
    """
    import json, sys
    from gated_lpi_exp.__main__ import main

    for name, argv in json.loads(sys.argv[1]):
        print(f"@@@ case {name}", flush=True)
        sys.argv = ["gated_lpi_exp", *argv]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        print(f"@@@ exit {code}", flush=True)
    """
)
"""Runs the CLI entry point once per case in one process (one import of torch for all cases)."""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread per process is much faster
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_cases(cases: dict[str, list[str]], cwd) -> dict[str, tuple[int, str]]:
    """Case name -> (exit status, everything it printed)."""
    done = subprocess.run(
        [sys.executable, "-u", "-c", DRIVER, json.dumps(list(cases.items()))],
        cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    found = re.findall(r"@@@ case (\w+)\n(.*?)@@@ exit (\S+)\n", done.stdout, flags=re.S)
    return {name: (int(code), text) for name, text, code in found}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A good series, a copy with a truncated checkpoint, one with NaN weights, one with pickle weights, and
    a relation folder whose file has the wrong schema."""
    root = tmp_path_factory.mktemp("inputs")
    good = make_series(root / "good")
    damaged = root / "damaged"
    shutil.copytree(good, damaged)
    weights = damaged / "step20" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated mid-file
    nan = make_series(root / "nan", [0, 10])
    tensors = load_file(nan / "step10" / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, nan / "step10" / "model.safetensors", metadata={"format": "pt"})
    manifest = read_manifest(nan)  # a series saved with its NaN: the manifest records the NaN weights
    manifest.checkpoints[1].files = {}
    write_manifest(nan, manifest)
    pickled = root / "pickled"
    model = random_olmo(vocab_size=len(bundled_tokenizer()))
    (pickled / "step0").mkdir(parents=True)
    model.config.save_pretrained(pickled / "step0")
    torch.save(model.state_dict(), pickled / "step0" / "pytorch_model.bin")
    bundled_tokenizer().save_pretrained(pickled / "step0")
    write_manifest(
        pickled, Manifest("p", "olmo", complete=True, checkpoints=[ManifestEntry(0, path="step0")])
    )
    bad_data = root / "bad_data" / "factual"
    bad_data.mkdir(parents=True)
    doc = {"name": "broken relation", "prompt_templates_zs": ["{} is"], "samples": "not a list"}
    (bad_data / "broken.json").write_text(json.dumps(doc))
    return dict(good=good, damaged=damaged, nan=nan, pickled=pickled, bad_data=bad_data.parent)


def test_bad_input_fails_with_one_clear_message_and_keeps_what_was_computed(inputs, tmp_path, caplog):
    work, port = tmp_path / "work", _free_port()
    base = overrides(inputs["good"], work)
    steps = ["checkpoints.select=steps", "checkpoints.steps=[0,15]"]
    cases = {
        "unknown_model": ["model=nope"],
        "unknown_option": ["attribution.nrom=exact"],
        "bad_value": [*base, "attribution.norm=bogus"],
        "no_step_matches": [*base, "checkpoints=range", "checkpoints.start=1000", "checkpoints.stop=2000"],
        "missing_fail": [*base, *steps, "checkpoints.missing=fail"],
        "missing_warn": [*base, *steps, "checkpoints.missing=warn", "attribution.enabled=false"],
        "damaged": overrides(inputs["damaged"], work),
        "no_relations": [*base, "relations.categories=[]", "relations.names=[]"],
        "unknown_relation": [*base, "relations.names=[no_such_relation]"],
        "wrong_schema": [*base, f"relations.source={inputs['bad_data']}"],
        "non_finite": overrides(inputs["nan"], work),
        "pickle_weights": overrides(inputs["pickled"], work),
        "tracking_down": [*base, f"tracking.uri=http://127.0.0.1:{port}", f"execution.result_dir={work}/never"],
        "tracking_local": [*base, f"tracking.uri=http://127.0.0.1:{port}", "tracking.on_unreachable=local",
                           "attribution.enabled=false", "checkpoints.limit=1"],
        "max_per_relation": [*base, "relations.max_per_relation=0"],
        "seed": [*base, "seed=-1"],
        "window_reversed": [*base, "++dynamics.windows={early:[200,0]}"],
        "window_not_steps": [*base, "++dynamics.windows={early:[a,b]}"],
        "top_n": [*base, "attribution.top_n_logged=-1"],
        "every_head": [*base, "ablation=top10_heads"],
        "ks_over_vocab": [*base, "evaluation.ks=[1,100000]"],
    }  # fmt: skip
    expected = {
        "unknown_model": (1, ["Could not find 'model/nope'", "Available options in 'model'", "tiny_moe"]),
        "unknown_option": (1, ["Key 'nrom' not in 'AttributionConfig'"]),
        "bad_value": (2, ["attribution.norm='bogus' is not valid; choose one of: frozen, exact."]),
        "no_step_matches": (2, ["No checkpoint matches the selection. Available steps: 0, 10, 20, 30."]),
        "missing_fail": (2, ["Steps not in the series: [15]. Available: 0, 10, 20, 30.", "missing=warn"]),
        "missing_warn": (0, ["Steps not in the series: [15]. Available: 0, 10, 20, 30. Skipping them."]),
        "damaged": (2, [f"Could not load checkpoint step 20 from {inputs['damaged']}/step20",
                        "Fix: replace the damaged files", "not recomputed"]),
        "no_relations": (2, ["relations selects nothing: set relations.categories or relations.names."]),
        "unknown_relation": (2, ["unknown relation(s) no_such_relation; available: "]),
        "wrong_schema": (2, ["DataError", "broken.json: field 'samples' is missing or not a non-empty list"]),
        "non_finite": (2, ["Non-finite model outputs at checkpoint step 10", "NaN/Inf at layer 1",
                            "model.layers.1.mlp.down_proj.weight", "Fix: replace the damaged"]),
        "pickle_weights": (2, ["only pickle-format weights (pytorch_model.bin)", "safetensors"]),
        "tracking_down": (2, [f"127.0.0.1:{port} does not answer", "tracking.on_unreachable=local"]),
        "tracking_local": (0, [f"127.0.0.1:{port} does not answer; logging locally to sqlite:///mlflow.db"]),
        "max_per_relation": (2, ["relations.max_per_relation=0 is not valid; use a number >= 1 or null."]),
        "seed": (2, ["seed=-1 is not valid; use a number >= 0."]),
        "window_reversed": (2, ["dynamics.windows.early=[200, 0] is not valid", "start < stop"]),
        "window_not_steps": (2, ["dynamics.windows.early=['a', 'b'] is not valid", "steps >= 0"]),
        "top_n": (2, ["attribution.top_n_logged=-1 is not valid; use a number >= 1."]),
        "every_head": (0, ["ablation.count=10 would zero every one of the 8 heads of random, so targeted "
                           "and random sets would be the same; clamped to 7 heads", "ablation=top1_head"]),
        "ks_over_vocab": (2, ["evaluation.ks=[1, 100000] asks for HIT@100000 but random has"]),
    }  # fmt: skip
    results = _cli_cases(cases, cwd=work.parent)
    assert sorted(results) == sorted(cases)
    for name, (code, messages) in expected.items():
        got_code, text = results[name]
        assert got_code == code, f"{name}: exit {got_code}\n{text}"
        assert "Traceback" not in text, f"{name}:\n{text}"
        for message in messages:
            assert message in text, f"{name}: {message!r} not in\n{text}"
    # Settings that cannot fit the model fail before any compute (no stage ran, no MLflow run opened).
    assert "attribution of" not in results["ks_over_vocab"][1] and "step 0" not in results["ks_over_vocab"][1]
    # A dead server fails before any compute; with on_unreachable=local the run lands in ./mlflow.db.
    assert "checkpoints:" not in results["tracking_down"][1] and not (work / "never").exists()
    assert len(runs_of(f"sqlite:///{work.parent}/mlflow.db")[1]) == 1

    # Nothing computed is lost: the checkpoint before the non-finite one is in the result store ...
    nan_cfg = compose_run_config(overrides(inputs["nan"], work))
    nan_store = result_store(nan_cfg)
    assert nan_store.get(resolve_series(nan_cfg.model, nan_cfg.checkpoints).checkpoints[0]) is not None
    # ... and once the damaged checkpoint is replaced, a rerun resumes after the two finished ones.
    shutil.copy2(inputs["good"] / "step20" / "model.safetensors", inputs["damaged"] / "step20")
    with caplog.at_level("INFO", logger="gated_lpi_exp"):
        rerun = run(compose_run_config(overrides(inputs["damaged"], work)))
    for step in (0, 10):
        assert f"step {step}: result from the result store, not recomputed" in caplog.text
    for step in (20, 30):
        assert f"step {step}: attribution of" in caplog.text
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    failed = client.get_run(client.get_run(rerun.run_id).data.tags["gated_lpi.resumed_from"])
    assert failed.info.status == "FAILED" and failed.data.params["model.source"] == str(inputs["damaged"])


def test_out_of_memory_halves_the_budget_then_fails_at_the_floor(inputs, caplog):
    cfg = compose_run_config(
        overrides(inputs["good"], inputs["good"].parent / "oom", "attribution.use_cache=false")
    )
    ckpt = resolve_series(cfg.model, cfg.checkpoints).checkpoints[1]
    model, tokenizer = load_checkpoint(cfg.model, ckpt), load_tokenizer(cfg.model, ckpt)
    samples = load_samples(cfg)
    budgets = []

    def attempt(budget_mb: int):  # the seam: a device that fits only 64 MB working tensors
        budgets.append(budget_mb)
        if budget_mb > 64:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {budget_mb} MiB")
        settings = replace(cfg.attribution, memory_budget_mb=budget_mb)
        return attribute_checkpoint(model, tokenizer, samples, ckpt, settings, dtype="float32")

    with caplog.at_level("WARNING", logger="gated_lpi_exp"):
        outcome = retry_out_of_memory(attempt, 512, 16, where="checkpoint step 10")
    assert budgets == [512, 256, 128, 64]
    assert (
        "checkpoint step 10: out of memory with attribution.memory_budget_mb=512; retrying with 256"
        in caplog.text
    )
    direct = attribute_checkpoint(model, tokenizer, samples, ckpt, cfg.attribution, dtype="float32")
    torch.testing.assert_close(torch.as_tensor(outcome.aggregate.ffn), torch.as_tensor(direct.aggregate.ffn))

    def never_fits(budget_mb: int):
        budgets.append(budget_mb)
        raise torch.OutOfMemoryError("CUDA out of memory")

    budgets.clear()
    with pytest.raises(AttributionError, match=r"step 10, even with attribution.memory_budget_mb=16") as err:
        retry_out_of_memory(never_fits, 64, 16, where="checkpoint step 10")
    assert budgets == [64, 32, 16] and "lower attribution.batch_size" in str(err.value)
