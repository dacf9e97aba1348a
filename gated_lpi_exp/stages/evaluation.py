"""The evaluation stage: HIT@k of the gold object token under the model's real next-token logits."""

from __future__ import annotations

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution import final_logits
from gated_lpi_exp.data.batches import prompt_batches
from gated_lpi_exp.errors import NonFiniteError
from gated_lpi_exp.metrics import gold_ranks, hit_rate
from gated_lpi_exp.schemas import DataFrame, ExampleHits, HitSummary


@torch.no_grad()
def evaluate_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    *,
    step: int,
    batch_size: int = 32,
    progress=None,
) -> DataFrame[ExampleHits]:
    """Gold-token rank of every example at one checkpoint (batched; independent of batch composition)."""
    device = next(model.parameters()).device
    parts = []
    for batch in prompt_batches(tokenizer, samples, batch_size, device):
        logits = final_logits(model, batch.input_ids, batch.attention_mask)  # [batch, vocab] float32
        if not bool(torch.isfinite(logits).all()):  # a NaN logit would otherwise rank the gold token first
            raise NonFiniteError(f"the model's own logits at checkpoint step {step} contain NaN or Inf")
        ranks = gold_ranks(logits, batch.gold_ids)  # [batch]
        parts.append(
            pd.DataFrame(
                {
                    "step": step,
                    "relation": batch.rows["relation"].to_numpy(),
                    "category": batch.rows["category"].to_numpy(),
                    "sample_id": batch.rows["sample_id"].to_numpy(),
                    "target_id": batch.gold_ids.cpu().numpy(),
                    "gold_rank": ranks,
                }
            )
        )
        if progress is not None:
            progress.update(len(batch.rows))
    return ExampleHits.check(pd.concat(parts, ignore_index=True))


def summarise_hits(hits: DataFrame[ExampleHits], ks: list[int]) -> DataFrame[HitSummary]:
    """HIT@k (:func:`~gated_lpi_exp.metrics.hit_rate`) overall, per category and per relation, for every
    checkpoint in ``hits``."""
    rows = []
    for scope, key in (("overall", None), ("category", "category"), ("relation", "relation")):
        groups = hits.groupby(["step"] if key is None else ["step", key])
        for name, part in groups:
            step = name[0] if isinstance(name, tuple) else name
            group = "all" if key is None else name[1]
            ranks = part["gold_rank"].to_numpy()
            for k in ks:
                rows.append(
                    dict(step=step, scope=scope, group=group, k=k, hit=hit_rate(ranks, k), n=len(ranks))
                )
    return HitSummary.check(pd.DataFrame(rows))


def hit_metrics(summary: DataFrame[HitSummary], step: int) -> dict[str, float]:
    """MLflow metric names -> values for one step: ``hit_at_10`` overall, ``hit_at_10.factual`` per category."""
    part = summary[(summary["step"] == step) & (summary["scope"] != "relation")]
    out = {}
    for row in part.itertuples():
        suffix = "" if row.scope == "overall" else f".{row.group}"
        out[f"hit_at_{row.k}{suffix}"] = row.hit
    return out
