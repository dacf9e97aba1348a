"""The benchmark (quick mode), the exp-sum backends, and the cost planner (offline)."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from huggingface_hub import constants as hub_constants

from gated_lpi_exp.adapters import FAMILIES, get_adapter
from gated_lpi_exp.attribution import gated_lpi, kernels, projection
from gated_lpi_exp.attribution.engine import Budget, score_neurons
from gated_lpi_exp.attribution.projection import chunk_scores
from gated_lpi_exp.bench import costs
from gated_lpi_exp.bench.__main__ import main as bench_main
from gated_lpi_exp.bench.dims import dims_from_config
from gated_lpi_exp.bench.layers import LayerShape, build_layer
from gated_lpi_exp.bench.machine import Rates
from gated_lpi_exp.bench.plan_report import format_plan, human_bytes
from gated_lpi_exp.bench.plan_report import main as plan_main
from gated_lpi_exp.bench.planner import make_plan
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.testing import random_model, random_olmoe

SHAPE_FIELDS = (
    "elements_per_s",
    "speedup_vs_reference",
    "efficiency_vs_ceiling",
    "peak_mem_mb",
    "max_abs_diff",
)
RATES = Rates(
    matmul_flops_per_s=100e9, exp_sum_compiled_per_s=1e9, exp_sum_kernel_per_s=3e9, exp_sum_eager_per_s=3e8
)
TINY = LayerShape("moe", 48, 500, 4, 24, 2, 6, 3, "rms")


HUB_CONFIGS = {
    "allenai/OLMoE-1B-7B-0924": dict(
        model_type="olmoe", hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        vocab_size=50304, norm_topk_prob=False, tie_word_embeddings=False,
    ),
    "allenai/OLMo-7B-0424-hf": dict(
        model_type="olmo", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=50304, tie_word_embeddings=False,
    ),
    "allenai/OLMo-7B": dict(  # OLMo v1's native layout (hf_olmo), converted into OlmoForCausalLM's fields
        model_type="hf_olmo", d_model=4096, n_heads=32, n_layers=32, mlp_ratio=4, mlp_hidden_size=22016,
        activation_type="swiglu", block_type="sequential", alibi=False, rope=True, attention_layer_norm=False,
        layer_norm_type="default", layer_norm_with_affine=False, include_bias=False, weight_tying=False,
        vocab_size=50280, embedding_size=50304, max_sequence_length=2048, eos_token_id=50279, pad_token_id=1,
    ),
    "EleutherAI/pythia-1b": dict(
        model_type="gpt_neox", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=8, vocab_size=50304, use_parallel_residual=True, tie_word_embeddings=False,
    ),
}  # fmt: skip
"""The dimensions of the real repositories' config.json files (the fields the planner reads)."""


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Any attempt to open a network connection fails the test; a hub cache holds the configs above."""

    def refuse(*args, **kwargs):
        raise AssertionError("the planner tried to reach the network")

    cache = tmp_path / "hub"
    for repo, config in HUB_CONFIGS.items():
        folder = cache / f"models--{repo.replace('/', '--')}"
        commit = "0" * 40
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True)
        (folder / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_quick_benchmark_writes_every_field(tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench_main(["--quick", "--repeat", "1", "--json", str(path)])
    report = json.loads(path.read_text())
    assert {"cores", "torch", "threads", "kernel"} <= set(report["machine"])
    assert report["memory_budget_mb"] == 512 and report["quick"] is True
    assert set(report["shapes"]) == {"moe", "moe_shared", "dense"}
    assert report["shared_vs_moe"] > 0 and "shared-expert MoE vs MoE" in capsys.readouterr().out
    for shape in report["shapes"].values():
        assert {"hidden", "vocab", "experts", "width", "top_k", "prompts"} <= set(shape["shape"])
        for field in SHAPE_FIELDS:
            assert shape[field] is not None and math.isfinite(shape[field]), field
        assert shape["max_abs_diff"] <= 1e-4 and shape["compared_scores"] > 0
        assert shape["elements_per_s"] > 0 and shape["speedup_vs_reference"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["native", "compiled"])
def test_fused_backends_match_eager(kernel):
    layer = build_layer(TINY)
    scores = {}
    for name in ("eager", kernel):
        with kernels.use_kernel(name):
            backend = kernels.resolve_kernel("cpu")
            scores[name] = score_neurons(layer.projection, layer.base, layer.neurons, Budget(512, backend))
    assert backend == kernel, f"{kernel} backend unavailable here"
    torch.testing.assert_close(scores[kernel], scores["eager"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_gated_lpi_agrees_across_backends():
    model = random_olmoe()
    ids = torch.tensor([[5, 9, 13, 4], [7, 3, 31, 2]])
    targets = torch.tensor([3, 17])
    results = {}
    for name in ("eager", "native", "compiled"):
        with kernels.use_kernel(name):
            results[name] = gated_lpi(model, ids, torch.ones_like(ids), targets, norm="exact")
    for name in ("native", "compiled"):
        for field in ("ffn", "attn", "heads", "ffn_layer", "attn_layer"):
            torch.testing.assert_close(
                getattr(results[name], field), getattr(results["eager"], field), atol=1e-5, rtol=0
            )


def test_underflowing_pairs_are_recomputed_exactly(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    rows, n, vocab = 3, 5, 300
    q = torch.randn(rows, vocab, generator=gen) * 3
    q[:, 0] = 60.0  # q peaks at token 0, P at token 1: the shift bound overshoots the max by ~60 nats
    proj = torch.randn(n, vocab, generator=gen)
    proj[:, 1] = 60.0
    coef = torch.rand(rows, n, generator=gen) + 0.5
    inv = torch.rand(rows, 1, generator=gen).expand(rows, n) + 0.5
    target = torch.tensor([1, 2, 3])
    base_lp = torch.zeros(rows)
    eager = chunk_scores(q, coef, proj, inv, None, target, base_lp, "eager")
    recomputed = []
    exact = projection._exact_lse
    monkeypatch.setattr(projection, "_exact_lse", lambda *a: recomputed.append(int(a[-1].sum())) or exact(*a))
    for name in ("native", "compiled"):
        with kernels.use_kernel(name):
            backend = kernels.resolve_kernel("cpu")
        fused = chunk_scores(q, coef, proj, inv, None, target, base_lp, backend)
        torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-6)
    assert len(recomputed) == 2 and min(recomputed) > 0


def test_kernel_choice_env_var_and_fallback(monkeypatch, caplog):
    monkeypatch.setenv(kernels.ENV_VAR, "eager")
    assert kernels.resolve_kernel("cpu") == "eager"
    monkeypatch.setenv(kernels.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="fastest"):
        kernels.resolve_kernel("cpu")
    monkeypatch.setenv(kernels.ENV_VAR, "native")
    state = {**kernels._state, "native:cpu": None, "warned": set()}
    monkeypatch.setattr(kernels, "_state", state)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        first, second = kernels.resolve_kernel("cpu"), kernels.resolve_kernel("cpu")
    assert first == second and first in ("compiled", "eager")
    assert sum("native kernel unavailable" in r.message for r in caplog.records) == 1


def test_planner_math_on_a_tiny_shape():
    dims = costs.ModelDims(
        "olmoe", layers=2, hidden=8, heads=2, head_dim=4, vocab=10, width=3, experts=4, top_k=2
    )
    work = costs.checkpoint_work(dims, [2, 1], tokens_per_prompt=5)
    routed = {2: 4 * (1 - 0.5**2), 1: 4 * (1 - 0.5)}  # expected distinct experts: 3 and 2
    ffn_el = 2 * sum(b * 2 * 3 * 10 for b in (2, 1))  # layers x prompts x top_k x width x vocab
    attn_el = 2 * sum(b * 8 * 10 for b in (2, 1))
    vec_el = 2 * sum(b * 4 * 10 for b in (2, 1))  # heads + 2 layer vectors
    assert work.parts["ffn"]["elements"] == ffn_el == 360
    assert work.parts["attn"]["elements"] == attn_el and work.eager_elements == vec_el
    assert work.parts["ffn"]["flops"] == pytest.approx(2 * sum(2 * routed[b] * 3 * 8 * 10 for b in (2, 1)))
    flops = (
        work.parts["ffn"]["flops"] + 2 * 2 * (2 * 8 * 8 * 10) + 2 * sum(2 * b * 4 * 8 * 10 for b in (2, 1))
    )
    assert work.matmul_flops == pytest.approx(flops + 2 * sum(4 * b * 8 * 10 for b in (2, 1)))
    idle = 2 * (4 - 2) * 3 * 8 * 3
    assert work.forward_flops == pytest.approx(2 * (dims.total_params - idle) * 3 * 5)
    seconds = costs.roofline_seconds(work, RATES)
    hand = (work.matmul_flops + work.forward_flops) / 100e9 + (ffn_el + attn_el) / 3e9 + vec_el / 3e8
    assert seconds == pytest.approx(hand)


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        (
            ["model=olmoe", "checkpoints=paper"],
            [
                "checkpoints: 19 [step grid to 1,200,000",
                "64 experts x 1024 (top-8)",
                "6.92B params",
                "memory: weights 27.7 GB as model.dtype=float32 (13.8 GB with model.dtype=bfloat16)",
            ],
        ),
        (["model=olmo"], ["checkpoints: 13 [step grid to 600,000", "FFN 11008", "32 layers", "6.89B params"]),
        (
            ["model=olmo", "checkpoints=all", "model.dtype=bfloat16"],
            ["checkpoints: 556 (estimate)", "download 15.3 TB", "weights 13.8 GB as model.dtype=bfloat16"],
        ),
        (["model=olmo_0424"], ["checkpoints: 489 (estimate)", "FFN 11008", "32 layers", "6.89B params"]),
        (
            ["model=pythia", "model.size=1b", "checkpoints=paper"],
            ["gpt_neox, 16 layers", "FFN 8192", "8 heads x 256"],
        ),
    ],
)
def test_planner_prints_every_section_offline(offline, tmp_path, capsys, overrides, expect):
    report = tmp_path / "bench.json"
    report.write_text(
        json.dumps({"rates": RATES.to_dict(), "shapes": {"moe": {"efficiency_vs_ceiling": 0.9}}})
    )
    plan_main(["--rates", str(report), *overrides])
    out = capsys.readouterr().out
    sections = ("model:", "checkpoints:", "examples:", "work per checkpoint", "FFN/expert neurons")
    sections += ("ATTN neurons", "heads + layers", "this machine:", "H100", "storage: download")
    for section in sections:
        assert section in out, section
    for text in expect:
        assert text in out, text


def test_planner_says_the_peak_disk_of_streaming_and_the_time_with_downloads(offline):
    paper = ["model=olmoe", "checkpoints=paper"]
    plan = make_plan(compose_run_config(paper), RATES, 0.9, bandwidth=50e6)
    per_ckpt = plan.dims.total_params * 4  # float32, as the hub stores OLMoE
    n = 19  # the paper's grid to 1.2M: 10K-70K every 10K (7), then 100K-1.2M every 100K (12)
    assert plan.download_bytes == pytest.approx(n * per_ckpt)
    assert plan.disk_bytes == pytest.approx(2 * per_ckpt)  # keep_checkpoints=none, prefetch=1
    fetch = per_ckpt / 50e6
    assert plan.streamed_seconds(10.0) == pytest.approx(n * fetch + fetch)  # download-bound: hidden compute
    assert plan.streamed_seconds(1000.0) == pytest.approx(n * 1000.0 + fetch)  # compute-bound
    text = format_plan(plan)
    assert f"download {human_bytes(n * per_ckpt)}, peak disk {human_bytes(2 * per_ckpt)}" in text
    assert "streamed at 50 MB/s" in text
    kept = make_plan(compose_run_config([*paper, "execution.keep_checkpoints=all"]), RATES, 0.9)
    assert kept.disk_bytes == pytest.approx(kept.download_bytes)
    serial = make_plan(compose_run_config([*paper, "execution.prefetch=0"]), RATES, 0.9, bandwidth=50e6)
    assert serial.streamed_seconds(10.0) == pytest.approx(n * (fetch + 10.0))
    assert serial.disk_bytes == pytest.approx(per_ckpt)


@pytest.mark.slow
def test_planner_counts_the_runs_checkpoints_and_examples_and_gives_a_finite_time(tmp_path):
    """The plan for a real local series counts what the run will compute. How close its time comes to a
    measured one is a benchmark's question (wall time depends on the machine's load), not a test's."""
    from gated_lpi_exp.data import load_relations
    from gated_lpi_exp.run import load_samples
    from gated_lpi_exp.testing import save_random_series, word_tokenizer

    samples = load_relations("bundled")
    words = sorted({w for t in samples["prompt"].tolist() + samples["object"].tolist() for w in t.split()})
    micro = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_experts=16, intermediate_size=16
    )
    save_random_series(tmp_path / "series", "olmoe", [0, 10], word_tokenizer(words), **micro)
    cfg = compose_run_config(
        ["model=micro_moe", "model.kind=local", f"model.source={tmp_path / 'series'}", "model.device=cpu",
         "relations.max_per_relation=24", "attribution.use_cache=false", "progress=false"]
    )  # fmt: skip
    plan = make_plan(cfg, RATES)
    assert plan.checkpoints.value == 2 and "measured" in plan.cpu_method
    rows = load_samples(cfg)
    assert plan.examples.value == len(rows)
    assert 0 < plan.cpu_s < float("inf")


@pytest.mark.slow
def test_plan_measure_runs_the_attribution_stage_on_the_first_checkpoint_and_stores_nothing(tmp_path, capsys):
    """``bench plan --measure`` on a local micro series: the measurement line and its JSON fields, the stage
    scored every planned example, and neither the attribution cache, the result store nor MLflow got a file.
    The ratio's size is the benchmark's to report (wall time depends on the machine's load), never a test's."""
    from gated_lpi_exp.data import load_relations
    from gated_lpi_exp.testing import save_random_series, word_tokenizer

    samples = load_relations("bundled")
    words = sorted({w for t in samples["prompt"].tolist() + samples["object"].tolist() for w in t.split()})
    micro = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_experts=8, intermediate_size=8
    )
    save_random_series(tmp_path / "series", "olmoe", [0, 10], word_tokenizer(words), **micro)
    rates = tmp_path / "bench.json"
    rates.write_text(json.dumps({"rates": RATES.to_dict(), "shapes": {}}))
    report_path, cache, results = tmp_path / "plan.json", tmp_path / "cache", tmp_path / "results"
    overrides = [
        "model=micro_moe", "model.kind=local", f"model.source={tmp_path / 'series'}", "model.device=cpu",
        "relations.max_per_relation=6", "statistics.resamples=20", "progress=false",
        f"attribution.cache_dir={cache}", f"execution.result_dir={results}",
    ]  # fmt: skip
    plan_main(["--rates", str(rates), "--measure", "--json", str(report_path), *overrides])
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    plan, measured = report["plan"], report["measurement"]
    assert report["overrides"] == overrides
    assert measured["step"] == 0 and measured["device"] == "cpu" and measured["planned_for"] == "this machine"
    assert measured["examples"] == plan["examples"] == 6 * 12  # every planned example went through the stage
    assert measured["relations_computed"] == 12  # cold: none came from a cache
    assert measured["planned_s"] == plan["cpu_s_per_checkpoint"] > 0
    assert measured["measured_s"] > 0
    assert measured["ratio"] == pytest.approx(measured["measured_s"] / measured["planned_s"], rel=1e-12)
    for key in ("load_start", "load_end"):
        assert len(measured[key]) == 3 and all(x >= 0 for x in measured[key])
    line = next(line for line in out.splitlines() if line.startswith("measured (attribution stage"))
    assert "72 examples" in line and f"measured/planned {measured['ratio']:.2f}" in line
    assert f"planned (this machine) {measured['planned_s']:.3g} s per checkpoint" in line
    assert f"load average {measured['load_start'][0]:.2f} at start" in line
    assert not cache.exists() and not results.exists()  # no attribution cache, no result store
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_planner_reads_every_familys_dimensions_from_its_config(family):
    model = random_model(family)
    dims = dims_from_config(model.config.to_dict(), "test")
    adapter = get_adapter(model)
    assert (dims.family, dims.layers, dims.hidden, dims.vocab) == (family, adapter.n_layers, 32, 97)
    assert (dims.heads, dims.head_dim, dims.experts, dims.top_k) == (
        adapter.n_heads,
        adapter.head_dim,
        adapter.n_experts,
        adapter.top_k,
    )
    assert dims.width == adapter.expert_width and dims.shared == getattr(adapter, "shared_width", 0)
    assert dims.params == sum(p.numel() for p in model.parameters())


def test_a_plan_that_cannot_read_its_model_ends_in_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as stop:
        bench_main(["plan", "model=olmoe"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "cannot read config.json" in err and "Fix:" in err
    assert "Traceback" not in err


def test_planner_refuses_an_unsupported_config():
    with pytest.raises(ConfigurationError, match="model_type 'gpt2' is not a supported family"):
        dims_from_config({"model_type": "gpt2"}, "config.json")


@pytest.mark.slow
def test_sweep_benchmark_reports_every_measure_and_leaves_the_cache_empty(tmp_path, capsys):
    """A smoke test of ``bench sweep`` on a small series: every field, and the bounds that do not depend on
    timing (the target itself is the benchmark's to report, never a test's)."""
    path = tmp_path / "sweep.json"
    bench_main(["sweep", "--steps", "3", "--hidden", "32", "--json", str(path)])
    report = json.loads(path.read_text())
    for key in ("compute_s", "download_s", "wall_target_s", "bandwidth_bytes_per_s", "checkpoint_bytes"):
        assert report[key] > 0, key
    for sweep in (report["prefetch0"], report["prefetch1"]):
        assert sweep["walk_s"] > 0 and sweep["left_in_cache_bytes"] == 0
        assert 0 < sweep["disk_peak_bytes"] <= 2 * report["checkpoint_bytes"]
    assert report["prefetch0"]["disk_peak_bytes"] <= report["checkpoint_bytes"] * 1.01
    out = capsys.readouterr().out
    assert "sweep, prefetch=1" in out and "target <= 1.15 x max" in out
