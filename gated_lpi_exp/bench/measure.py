"""``bench plan --measure``: the plan's time per checkpoint set against the attribution stage run for real.

The plan's first checkpoint is loaded as a run loads it and scored by the run's own attribution stage
(:func:`~gated_lpi_exp.execution.stage_guards.attribution_stage`, under the configured ``compat`` mode), with
the attribution cache switched off so the compute is cold. Nothing is logged to MLflow and nothing is written
to the result store or the attribution cache. The measurement is one wall-clock time on a possibly shared
machine, so the load average is recorded before and after it: a ratio far from 1 on a busy machine says more
about the machine than about the planner.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

import torch

from gated_lpi_exp.bench.planner import Plan
from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer, pick_device, resolve_series
from gated_lpi_exp.compat import compat_mode
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data import dataset_hash
from gated_lpi_exp.data.batches import token_fingerprint
from gated_lpi_exp.execution.stage_guards import attribution_stage
from gated_lpi_exp.execution.walk import checkpoint_feed
from gated_lpi_exp.run import load_samples
from gated_lpi_exp.storage.results import ResultStore


@dataclass
class Measurement:
    """One timed attribution of the plan's first checkpoint, next to the plan's estimate for it."""

    step: int
    """The checkpoint measured (the first the run would walk)."""
    device: str
    examples: int
    """Examples the stage scored (from the per-relation sums it returned)."""
    relations_computed: int
    planned_for: str
    """Which of the plan's times ``planned_s`` is: ``this machine`` (CPU) or ``one H100`` (a CUDA device)."""
    planned_s: float
    measured_s: float
    """Wall time of the attribution stage alone (model and tokenizer loaded before the clock starts)."""
    load_start: tuple[float, float, float]
    """``os.getloadavg()`` (1, 5, 15 minutes) just before the stage."""
    load_end: tuple[float, float, float]
    cores: int

    @property
    def ratio(self) -> float:
        """measured / planned: above 1, the plan was optimistic; below 1, pessimistic."""
        return self.measured_s / self.planned_s

    def to_dict(self) -> dict:
        """The JSON-ready fields, ``ratio`` included."""
        return asdict(self) | {"ratio": self.ratio}


def measure_first_checkpoint(cfg: RunConfig, plan: Plan) -> Measurement:
    """Run the attribution stage on ``cfg``'s first checkpoint, cold, and time it against the plan's time per
    checkpoint (on this machine; on one H100 when the model runs on a CUDA device).

    A project suite is built first if needed; a hub checkpoint is downloaded (and evicted after, as
    ``execution.keep_checkpoints`` says) exactly as the run's walk would.
    """
    torch.manual_seed(cfg.seed)
    samples = load_samples(cfg)
    first = resolve_series(cfg.model, cfg.checkpoints, progress=cfg.progress).checkpoints[0]
    cold = replace(cfg, attribution=replace(cfg.attribution, use_cache=False))
    device = pick_device(cfg.model.device)
    with checkpoint_feed(cfg, [first]) as feed:
        path = feed.path(first)
        tokenizer = load_tokenizer(cfg.model, first, path)
        model = load_checkpoint(cfg.model, first, device=device, path=path)
        # Only its attribution lock is used, and only with the cache on (off here): nothing is written.
        store = ResultStore(cold, dataset_hash(samples), token_fingerprint(tokenizer, samples))
        load_start = os.getloadavg()
        started = time.perf_counter()
        with compat_mode(cfg.attribution.compat, model):
            outcome = attribution_stage(cold, model, tokenizer, samples, first, store)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        measured = time.perf_counter() - started
        load_end = os.getloadavg()
        del model
        feed.done(first)
    scored = sum(int(sums.counts.sum()) for sums in outcome.sums.values())
    planned_for, planned = (
        ("one H100", plan.h100_s) if device.type == "cuda" else ("this machine", plan.cpu_s)
    )
    return Measurement(
        first.step, str(device), scored, outcome.computed_relations, planned_for, planned, measured,
        load_start, load_end, os.cpu_count() or 1,
    )  # fmt: skip


def format_measurement(m: Measurement) -> str:
    """One line: planned and measured seconds, their ratio, and the load average around the measurement."""
    return (
        f"measured (attribution stage, step {m.step}, {m.examples} examples, {m.relations_computed} "
        f"relations, {m.device}, cold: no attribution cache): planned ({m.planned_for}) {m.planned_s:.3g} s "
        f"per checkpoint, measured {m.measured_s:.3g} s, measured/planned {m.ratio:.2f} [load average "
        f"{m.load_start[0]:.2f} at start, {m.load_end[0]:.2f} at end, {m.cores} cores]"
    )
