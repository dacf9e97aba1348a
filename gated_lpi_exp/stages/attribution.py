"""The attribution stage: Gated-LPI over the run's examples at one checkpoint, cached per relation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp import __version__
from gated_lpi_exp.adapters import get_adapter
from gated_lpi_exp.attribution import gated_lpi, predicted_targets
from gated_lpi_exp.attribution.aggregate import UNIT_KINDS, CheckpointAggregate, ScoreSums
from gated_lpi_exp.attribution.positions import reduce_positions
from gated_lpi_exp.attribution.replicates import REPLICATE_KINDS, ReplicateAccumulator
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import AttributionConfig, StatisticsConfig
from gated_lpi_exp.data.batches import prompt_batches, token_fingerprint
from gated_lpi_exp.metrics.bootstrap import METHOD, example_weights
from gated_lpi_exp.schemas import DataFrame, HeadScores, TopUnits
from gated_lpi_exp.storage.arrays import ArrayStore, content_key, report_damaged
from gated_lpi_exp.storage.results import checked_sums, weight_files

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
"""Bumped when what a cache entry holds changes meaning."""


@dataclass
class AttributionOutcome:
    """One checkpoint's aggregates, the per-relation sums behind them, and how many came from the cache."""

    aggregate: CheckpointAggregate
    sums: dict[str, ScoreSums]
    cached_relations: int
    computed_relations: int


def relation_key(
    checkpoint: Checkpoint, dtype: str, rows: pd.DataFrame, cfg: AttributionConfig, tokens: str
) -> dict:
    """Everything that determines one relation's sums at one checkpoint (``tokens``: the
    :func:`~gated_lpi_exp.data.batches.token_fingerprint` of its rows)."""
    columns = ["sample_id", "subject", "object", "template", "prompt"]
    content = rows[columns].astype(str).to_numpy().tolist()
    return {
        "format": CACHE_FORMAT,
        "package": __version__,
        "model": checkpoint.source,
        "revision": checkpoint.revision,
        **({"commit": checkpoint.commit} if checkpoint.commit else {}),  # local keys stay as they were
        "weights": weight_files(checkpoint),  # the files' sha256: a file changed in place gets a new key
        "dtype": dtype,
        "relation": rows["relation"].iloc[0],
        "rows": content_key({"rows": content}),
        "tokens": tokens,
        "norm": cfg.norm,
        "target": cfg.target,
        **cfg.scoring_settings(),
    }


def replicates_key(
    checkpoint: Checkpoint,
    dtype: str,
    samples: pd.DataFrame,
    cfg: AttributionConfig,
    stats: StatisticsConfig,
    tokens: str,
) -> dict:
    """Everything that determines the bootstrap replicates of one checkpoint's mean scores (``tokens``: the
    :func:`~gated_lpi_exp.data.batches.token_fingerprint` of ``samples``)."""
    content = samples[["relation", "sample_id", "subject", "object", "prompt"]].astype(str)
    description = relation_key(checkpoint, dtype, samples, cfg, tokens)
    description.update(
        relation="(all)",
        rows=content_key({"rows": content.to_numpy().tolist()}),
        bootstrap={"method": METHOD, "resamples": stats.resamples, "seed": stats.seed},
    )
    return description


def attribute_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    checkpoint: Checkpoint,
    cfg: AttributionConfig,
    *,
    dtype: str = "auto",
    progress=None,
    statistics: StatisticsConfig | None = None,
) -> AttributionOutcome:
    """Mean Gated-LPI of every unit over ``samples`` at ``checkpoint``, reusing cached relations.

    With ``statistics.resamples > 0`` the aggregate also carries bootstrap replicates of the mean scores
    (:mod:`gated_lpi_exp.attribution.replicates`), cached for the whole example set; when they are not in
    the cache, every relation is recomputed in one pass (their sums are replaced by identical ones).

    Raises:
        AttributionError: a score is NaN or infinite (raised by the engine; the run traces it to a layer).
    """
    store = ArrayStore(cfg.cache_dir, "attribution") if cfg.use_cache else None
    wanted = statistics is not None and statistics.resamples > 0
    rep_entry = None
    if statistics is not None and wanted:
        rep_entry = replicates_key(
            checkpoint, dtype, samples, cfg, statistics, token_fingerprint(tokenizer, samples)
        )
    rep_key = content_key(rep_entry) if rep_entry else None
    replicates = store.get(rep_key) if store and rep_key else None
    sums: dict[str, ScoreSums] = {}
    missing: dict[str, tuple[str, dict]] = {}
    for relation, rows in samples.groupby("relation", sort=False):
        description = relation_key(checkpoint, dtype, rows, cfg, token_fingerprint(tokenizer, rows))
        key = content_key(description)
        hit = _cached(store, key) if store else None
        if hit is None:
            missing[relation] = (key, description)
        else:
            sums[relation] = hit
    recompute_all = wanted and replicates is None
    if progress is not None:
        progress.update(0 if recompute_all else int((~samples["relation"].isin(missing)).sum()))
    if missing or recompute_all:
        # One pass over every uncached relation: batches span relations, so the shared per-neuron
        # projections (the dominant cost) are amortised over as many prompts as a batch holds.
        todo = samples if recompute_all else samples[samples["relation"].isin(missing)]
        accumulator = _accumulator(todo, statistics) if recompute_all else None
        computed = _relation_sums(model, tokenizer, todo, cfg, progress, accumulator)
        for relation, (key, description) in missing.items():
            if store:
                store.put(key, _to_arrays(computed[relation]), description)
        sums.update(computed)
        if accumulator is not None:
            replicates = accumulator.means()
            if store and rep_key and rep_entry:
                store.put(rep_key, replicates, rep_entry)
    ordered = {rel: sums[rel] for rel in samples["relation"].unique()}
    aggregate = CheckpointAggregate.from_sums(checkpoint.step, ordered)
    aggregate.replicates = replicates
    return AttributionOutcome(aggregate, ordered, len(ordered) - len(missing), len(missing))


def _accumulator(rows: pd.DataFrame, statistics: StatisticsConfig | None) -> ReplicateAccumulator:
    assert statistics is not None
    weights = example_weights(
        rows["relation"].tolist(), rows["sample_id"].tolist(), statistics.resamples, statistics.seed
    )  # [R, n] in the order prompt_batches delivers the rows
    return ReplicateAccumulator(weights)


def _relation_sums(model, tokenizer, rows, cfg, progress, accumulator=None) -> dict[str, ScoreSums]:
    """Per-relation, per-parity sums of every score over ``rows`` (which may span relations); also feeds
    each batch's scores to ``accumulator`` (bootstrap replicates) when one is given."""
    device = next(model.parameters()).device
    relations = list(rows["relation"].unique())
    # Slot 2*r + parity collects relation r's even (0) or odd (1) examples.
    slots = rows["relation"].map({r: i for i, r in enumerate(relations)}).to_numpy() * 2
    slots = slots + (rows["sample_id"].to_numpy() % 2)
    counts = np.bincount(slots, minlength=2 * len(relations)).astype(np.int64)
    totals: dict[str, np.ndarray] | None = None
    offset = 0
    for batch in prompt_batches(tokenizer, rows, cfg.batch_size, device):
        targets = batch.gold_ids
        if cfg.target == "predicted":
            targets = predicted_targets(model, batch.input_ids, batch.attention_mask)
        result = gated_lpi(
            model,
            batch.input_ids,
            batch.attention_mask,
            targets,
            norm=cfg.norm,
            memory_budget_mb=cfg.memory_budget_mb,
            attn_positions=bool(cfg.attn_positions),
        )
        if result.attn_positions is not None and result.prompt_lengths is not None:
            # one score per attention neuron, reduced over the prompt's positions
            result.attn = reduce_positions(
                result.attn_positions, result.prompt_lengths, cfg.attn_position_reduce
            )
        where = torch.as_tensor(slots[offset : offset + len(batch.rows)])
        offset += len(batch.rows)
        part = {kind: _slot_sums(getattr(result, kind).cpu(), where, len(counts)) for kind in UNIT_KINDS}
        totals = part if totals is None else {k: totals[k] + part[k] for k in totals}
        if accumulator is not None:
            accumulator.add({kind: getattr(result, kind) for kind in REPLICATE_KINDS})
        if progress is not None:
            progress.update(len(batch.rows))
    assert totals is not None
    return {
        rel: ScoreSums({k: v[2 * i : 2 * i + 2] for k, v in totals.items()}, counts[2 * i : 2 * i + 2])
        for i, rel in enumerate(relations)
    }


def _slot_sums(scores: torch.Tensor, slots: torch.Tensor, n_slots: int) -> np.ndarray:
    """[batch, ...] scores -> [n_slots, ...] float64 sums per slot."""
    out = torch.zeros((n_slots, *scores.shape[1:]), dtype=torch.float64)
    out.index_add_(0, slots, scores.double())
    return out.numpy()


def _to_arrays(sums: ScoreSums) -> dict[str, np.ndarray]:
    return {**sums.sums, "counts": sums.counts}


def _cached(store: ArrayStore, key: str) -> ScoreSums | None:
    """A relation's cached sums, or None when absent or damaged (reported; then recomputed)."""
    arrays = store.get(key)
    if arrays is None:
        return None
    try:
        return checked_sums({k: arrays[k] for k in UNIT_KINDS}, arrays["counts"])
    except Exception as exc:  # noqa: BLE001 - a foreign or damaged entry is recomputed, never trusted
        report_damaged(store.path(key), exc)
        return None


def top_units(aggregate: CheckpointAggregate, model: PreTrainedModel, n: int) -> DataFrame[TopUnits]:
    """The ``n`` highest-|I| FFN/expert neurons, attention neurons and heads, with their coordinates."""
    adapter = get_adapter(model)
    rows = []
    for kind in ("ffn", "attn", "heads"):
        scores = aggregate.scores(kind)  # [layers, units]
        flat = np.abs(scores).ravel()
        order = np.lexsort((np.arange(flat.size), -flat))[:n]  # ties: lower index first
        for rank, idx in enumerate(order, start=1):
            layer, unit = divmod(int(idx), scores.shape[1])
            expert, head, neuron = -1, -1, unit
            if kind == "ffn":
                expert, neuron = adapter.locate_ffn(unit)  # MoE: shared experts come after the routed
            elif kind == "attn":
                head, neuron = divmod(unit, adapter.head_dim)
            elif kind == "heads":
                head, neuron = unit, -1
            rows.append(
                dict(
                    step=aggregate.step,
                    kind=kind,
                    rank=rank,
                    layer=layer,
                    expert=expert,
                    head=head,
                    neuron=neuron,
                    score=float(scores[layer, unit]),
                )
            )
    return TopUnits.check(pd.DataFrame(rows))


def head_scores(aggregate: CheckpointAggregate) -> DataFrame[HeadScores]:
    """Every head's mean score at one checkpoint, overall and per relation (long format)."""
    parts = []
    for relation, heads in [("all", aggregate.heads)] + [
        (r, m["heads"]) for r, m in aggregate.per_relation.items()
    ]:
        layers, n_heads = heads.shape
        parts.append(
            pd.DataFrame(
                {
                    "step": aggregate.step,
                    "relation": relation,
                    "layer": np.repeat(np.arange(layers), n_heads),
                    "head": np.tile(np.arange(n_heads), layers),
                    "score": heads.ravel(),
                }
            )
        )
    return HeadScores.check(pd.concat(parts, ignore_index=True))


def aggregate_arrays(aggregate: CheckpointAggregate) -> dict[str, np.ndarray]:
    """The checkpoint's mean scores over the run's examples as named float32 arrays (an ``.npz`` artifact)."""
    return {kind: aggregate.scores(kind).astype(np.float32) for kind in UNIT_KINDS}
