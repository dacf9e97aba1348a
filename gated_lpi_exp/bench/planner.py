"""``python -m gated_lpi_exp.bench plan [--rates JSON] [overrides...]``: a run's cost before any download
(checked against one real checkpoint by ``--measure``, ``measure.py``).

Dimensions come from the model's own ``config.json`` (``dims.py``: the hub cache, else fetched once; a built
suite's or a local series' first checkpoint; or, for a suite not built yet, the config its spec will build),
read by the family's adapter. Checkpoints: explicit step lists as configured;
``all`` or a range on a hub model is estimated from the series' known branch count and spacing. Examples:
the configured relations, loaded from local data (``lre`` counts as 906, the paper's number, when not cached).
Time on this machine: for small models (≤ ``CALIBRATE_MAX_PARAMS``) one batch of ``gated_lpi`` is timed on a
random model of the same dimensions, because fixed per-call costs dominate there; otherwise the roofline of
``costs.py`` at rates measured now (or read from a benchmark report) divided by the engine's efficiency.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gated_lpi_exp.bench import costs
from gated_lpi_exp.bench.costs import BYTES_PER_PARAM, KNOWN_SERIES, STORED_BYTES_PER_PARAM, ModelDims, Work
from gated_lpi_exp.bench.dims import dims_from_config, hub_config
from gated_lpi_exp.bench.machine import Rates, measure_rates
from gated_lpi_exp.checkpoints.grid import grid_steps
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.errors import ConfigurationError

CALIBRATE_MAX_PARAMS = 100e6
DEFAULT_BANDWIDTH = 100e6
"""Bytes per second from the hub when none is given (about a 1 Gbit/s link)."""
PAPER_LRE_EXAMPLES = 906
PAPER_RELATIONS = {"linguistic": 3, "commonsense": 3, "factual": 2, "bias": 4}  # the paper's 12 relations


@dataclass
class Count:
    """A number and how it was obtained."""

    value: int
    note: str
    estimate: bool = False


@dataclass
class Plan:
    """Everything the planner prints."""

    model: str
    dims: ModelDims
    checkpoints: Count
    examples: Count
    batches: list[int]
    work: Work
    cpu_s: float  # per checkpoint, this machine
    cpu_method: str
    h100_least_s: float
    h100_s: float
    download_bytes: float
    disk_bytes: float
    """Peak disk the checkpoints take: with ``keep_checkpoints=none`` only ``prefetch + 1`` at once."""
    storage_note: str
    rates: Rates
    rates_note: str
    sensitivity: dict[str, tuple[float, float]]  # larger batch size -> (this machine, H100) s/checkpoint
    dtype: str = "float32"  # the weights' dtype once loaded (model.dtype; auto = as stored, float32)
    bandwidth: float = DEFAULT_BANDWIDTH
    """Assumed download rate from the hub, bytes per second."""
    prefetch: int = 1

    def streamed_seconds(self, compute_s: float) -> float:
        """Wall time of the walk at ``compute_s`` per checkpoint, downloads included: with prefetch the
        slower of the two streams plus the first download; without, their sum."""
        n, fetch = (
            self.checkpoints.value,
            self.download_bytes / max(self.checkpoints.value, 1) / self.bandwidth,
        )
        if self.prefetch == 0:
            return n * (fetch + compute_s)
        return max(n * fetch, n * compute_s) + fetch


def model_dims(cfg: RunConfig) -> ModelDims:
    """The model's dimensions, read from its ``config.json`` by the family's adapter."""
    model = cfg.model
    if model.kind == "hub":
        return dims_from_config(*hub_config(model.source))
    if model.kind == "suite":
        built = _suite_config(cfg)
        if built is not None:
            return dims_from_config(json.loads(built.read_text()), f"{built}")
        from gated_lpi_exp.suites.model import model_config

        spec = model.suite.resolved()
        config = model_config(spec, spec.vocab_size, 0, 1).to_dict()
        return dims_from_config(config, "suite spec (not built yet; vocab is the tokenizer's target size)")
    first = _local_steps(cfg)[0]
    path = Path(first.source) / "config.json"
    return dims_from_config(json.loads(path.read_text()), str(path))


def count_checkpoints(cfg: RunConfig) -> Count:
    """Checkpoints the run will walk: exact for suites and local series, from the table for hub models."""
    sel = cfg.checkpoints
    if cfg.model.kind != "hub":
        from gated_lpi_exp.checkpoints.resolve import select_checkpoints

        available = _local_steps(cfg)
        select, steps = sel.select, sel.steps
        if select == "grid":
            end = cfg.model.series_end if cfg.model.series_end is not None else available[-1].step
            select, steps = "steps", grid_steps(sel.grid, end)
        chosen = select_checkpoints(
            available, select=select, steps=steps, start=sel.start, stop=sel.stop,
            every=sel.every, match=sel.match, missing="warn", limit=sel.limit,
        ).checkpoints  # fmt: skip
        return Count(len(chosen), f"{len(available)} in the series")
    if sel.select in ("steps", "grid"):
        end = _series_end(cfg)
        if sel.select == "steps":
            steps, note = sel.steps, "explicit step list"
        elif end is None:  # count the open segments' first steps only
            closed = [seg if seg[1] is not None else [seg[0], seg[0], seg[2]] for seg in sel.grid]
            steps, note = (
                grid_steps(closed, 0),
                "step grid; its end is unknown offline (set model.series_end)",
            )
        else:
            steps, note = grid_steps(sel.grid, end), f"step grid to {end:,}"
        n = len(set(steps))
        note += ", each mapped to the nearest branch" if sel.match == "nearest" else ""
        return Count(min(n, sel.limit or n), note, estimate=sel.select == "grid" and end is None)
    if cfg.model.source not in KNOWN_SERIES:
        raise ConfigurationError(
            f"checkpoint count of {cfg.model.source!r} is unknown offline; use checkpoints=paper or "
            "checkpoints.select=steps, or add it to gated_lpi_exp.bench.costs.KNOWN_SERIES."
        )
    total, spacing, source = KNOWN_SERIES[cfg.model.source]
    n = total
    if sel.select == "range":
        lo, hi = sel.start or spacing, sel.stop or total * spacing
        n = max(0, (min(hi, total * spacing) - max(lo, spacing)) // max(spacing, sel.every or 0) + 1)
    return Count(min(n, sel.limit or n), f"estimate: {source}", estimate=True)


def batch_sizes(examples: int, size: int) -> list[int]:
    """The attribution stage's batches on a cold checkpoint: ``size`` prompts at a time, across relations
    (every relation is computed in one pass when none is in the attribution cache)."""
    return [min(size, examples - lo) for lo in range(0, examples, size)]


def count_examples(cfg: RunConfig) -> Count:
    """The run's examples (the per-relation cap applied)."""
    rel = cfg.relations
    if rel.source == "lre" and not _lre_cached():
        wanted = len(rel.names) if rel.names else sum(PAPER_RELATIONS[c] for c in set(rel.categories))
        n = round(PAPER_LRE_EXAMPLES * min(wanted, 12) / 12)
        return Count(n, "lre is not cached: the paper's 906 examples (not downloaded)", estimate=True)
    from gated_lpi_exp.data import load_relations, select_relations

    samples = load_relations(rel.source, template=rel.template, duplicates=rel.duplicates)
    samples = select_relations(
        samples, names=rel.names or None, categories=None if rel.names else rel.categories
    )
    per = samples.groupby("relation", sort=False).size().tolist()
    if rel.max_per_relation is not None:
        per = [min(n, rel.max_per_relation) for n in per]
    return Count(sum(per), f"{rel.source} relations, {len(per)} relations")


def make_plan(
    cfg: RunConfig,
    rates: Rates | None = None,
    efficiency: float | None = None,
    rates_note: str = "",
    bandwidth: float = DEFAULT_BANDWIDTH,
) -> Plan:
    """The cost of ``cfg``'s attribution per checkpoint and in total (rates measured now when None)."""
    dims = model_dims(cfg)
    checkpoints = count_checkpoints(cfg)
    examples = count_examples(cfg)
    budget = cfg.attribution.memory_budget_mb

    def work_at(size: int) -> Work:
        chunk = max(1, int(budget * 2**20 * 0.85) // (dims.vocab * 4))  # projection.fused_chunk_size
        return costs.checkpoint_work(dims, batch_sizes(examples.value, size), chunk_neurons=chunk)

    size = cfg.attribution.batch_size
    batches = batch_sizes(examples.value, size)
    work = work_at(size)
    rates = rates or measure_rates(quick=True)
    rates_note = rates_note or "measured now (quick)"
    if dims.total_params <= CALIBRATE_MAX_PARAMS:
        cpu_s, method = calibrated_seconds(dims, batches, cfg.attribution.norm, budget)
    else:
        eff = efficiency or costs.DEFAULT_CPU_EFFICIENCY
        cpu_s = costs.roofline_seconds(work, rates) / eff
        method = f"roofline at the rates below / efficiency {eff:.2f}"
    least, h100 = costs.h100_seconds(work)
    # Projections are recomputed for every batch: larger batches (attribution.batch_size) amortise them.
    sensitivity = {}
    options = {f"{4 * size}": 4 * size} if 4 * size < examples.value else {}
    options[f"{examples.value} (all examples in one batch)"] = examples.value
    for label, larger in options.items():
        scale = costs.roofline_seconds(work_at(larger), rates) / costs.roofline_seconds(work, rates)
        sensitivity[label] = (cpu_s * scale, costs.h100_seconds(work_at(larger))[1])
    download, disk, note = _storage(cfg, dims, checkpoints.value)
    return Plan(
        cfg.model.name, dims, checkpoints, examples, batches, work, cpu_s, method, least, h100,
        download, disk, note, rates, rates_note, sensitivity,
        "float32" if cfg.model.dtype == "auto" else cfg.model.dtype, bandwidth, cfg.execution.prefetch,
    )  # fmt: skip


def calibrated_seconds(dims: ModelDims, batches: list[int], norm: str, budget_mb: float) -> tuple[float, str]:
    """Time ``gated_lpi`` on a random model with ``dims`` for a full and a one-prompt batch; interpolate."""
    from gated_lpi_exp.attribution import gated_lpi

    model = _random_model(dims)
    gen = torch.Generator().manual_seed(0)

    def timed(b: int) -> float:
        ids = torch.randint(3, dims.vocab, (b, 12), generator=gen)
        start = time.perf_counter()
        gated_lpi(model, ids, torch.ones_like(ids), ids[:, -1], norm=norm, memory_budget_mb=budget_mb)
        return time.perf_counter() - start

    full = max(batches)
    timed(full)  # warm-up: kernel build, first-call allocations
    t_full, t_one = min(timed(full) for _ in range(3)), min(timed(1) for _ in range(3))
    per_prompt = (t_full - t_one) / max(full - 1, 1)
    total = sum(t_one + per_prompt * (b - 1) for b in batches)
    return total, f"measured: gated_lpi on a random model of these dims ({full} prompts: {t_full:.3f} s)"


def _random_model(dims: ModelDims) -> torch.nn.Module:
    """A float32 model of ``dims``' own config with the library's default init (scales like a trained small
    model), or an OLMoE/OLMo of the same shape when the dimensions come without a config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if dims.config is not None:
        fields = {k: v for k, v in dims.config.items() if k != "model_type"}
        config = AutoConfig.for_model(dims.config["model_type"], **fields)
    else:
        shape: dict[str, Any] = dict(
            vocab_size=dims.vocab, hidden_size=dims.hidden, num_hidden_layers=dims.layers,
            num_attention_heads=dims.heads, num_key_value_heads=dims.heads, intermediate_size=dims.width,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=1,
            tie_word_embeddings=False,
        )  # fmt: skip
        moe = dict(num_experts=dims.experts, num_experts_per_tok=dims.top_k, norm_topk_prob=False)
        config = (
            AutoConfig.for_model("olmoe", **shape, **moe)
            if dims.is_moe
            else AutoConfig.for_model("olmo", **shape)
        )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


def _storage(cfg: RunConfig, dims: ModelDims, checkpoints: int) -> tuple[float, float, str]:
    per_ckpt = dims.total_params * STORED_BYTES_PER_PARAM  # hub series, suites and local series: float32
    if cfg.model.kind == "hub":
        ex = cfg.execution
        if ex.keep_checkpoints == "all":
            return per_ckpt * checkpoints, per_ckpt * checkpoints, "float32 weights as stored on the hub; " \
                "keep_checkpoints=all: the hub cache keeps every branch"  # fmt: skip
        held = min(ex.prefetch + 1, checkpoints)
        note = (
            f"float32 weights as stored on the hub; keep_checkpoints=none, prefetch={ex.prefetch}: at most "
            f"{held} checkpoint{'s' if held != 1 else ''} at once per process, each evicted once its results are stored"
        )
        return per_ckpt * checkpoints, per_ckpt * held, note
    return 0.0, per_ckpt * checkpoints, "nothing to download; float32 checkpoints on local disk"


def weight_memory(dims: ModelDims) -> dict[str, float]:
    """Bytes the loaded weights take, per ``model.dtype`` (the attribution itself stays float32)."""
    return {dtype: dims.total_params * BYTES_PER_PARAM[dtype] for dtype in ("float32", "bfloat16", "float16")}


def _series_end(cfg: RunConfig) -> int | None:
    """Where an open grid segment ends: ``model.series_end``, else the known hub series' last step; None when
    neither is known offline."""
    if cfg.model.series_end is not None:
        return cfg.model.series_end
    if cfg.model.source in KNOWN_SERIES:
        total, spacing, _ = KNOWN_SERIES[cfg.model.source]
        return total * spacing
    return None


def _local_steps(cfg: RunConfig) -> list:
    from gated_lpi_exp.checkpoints.resolve import Checkpoint, list_local_checkpoints

    if cfg.model.kind == "local":
        return list_local_checkpoints(cfg.model.source)
    spec = cfg.model.suite.resolved()
    return [Checkpoint(step=s, source="") for s in spec.checkpoint_steps or []]


def _suite_config(cfg: RunConfig) -> Path | None:
    from gated_lpi_exp.suites.spec import suite_dir

    root = suite_dir(cfg.model.suite)
    found = sorted(root.glob("step*/config.json")) if root.is_dir() else []
    return found[0] if found else None


def _lre_cached() -> bool:
    from gated_lpi_exp.data.lre import LRE_SHA256, default_cache_dir

    return all((default_cache_dir() / path).is_file() for path in LRE_SHA256)
