"""The ablation stage: HIT@10 with the most important units zeroed, against matched random controls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate, ScoreSums
from gated_lpi_exp.config import AblationConfig
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.interventions import ablate
from gated_lpi_exp.metrics import MIN_BASE_HIT10, drop_percent, hit_rate
from gated_lpi_exp.schemas import AblationResult, DataFrame
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint

UNIT_SCORES = {"head": "heads", "ffn_neuron": "ffn"}
"""Ablation unit -> the score kind of :class:`CheckpointAggregate` that ranks it."""
K = 10
"""The ablation's measure is HIT@K (the paper's HIT@10; the table columns say ``hit_at_10``)."""


def unit_count(cfg: AblationConfig, population: int) -> int:
    """How many units an ablation zeroes: ``count`` heads, or ``ceil(fraction * population)`` neurons.

    Raises:
        ConfigurationError: that would be every unit (the run checks this before compute, see
            :mod:`gated_lpi_exp.execution.preflight`; this guards the stage used on its own).
    """
    n = cfg.count if cfg.unit == "head" else max(1, math.ceil(round(cfg.fraction * population, 9)))
    if n >= population:
        raise ConfigurationError(
            f"ablation {cfg.name} would zero {n} of {population} {cfg.unit} units, i.e. all of them: the "
            "targeted and random sets would be the same. Fix: a smaller ablation.count or ablation.fraction."
        )
    return n


def rank_units(scores: np.ndarray, n: int, rank_by: str) -> np.ndarray:
    """Flat indices of the ``n`` top units of ``scores`` [layers, units] (ties: lower index first)."""
    key = np.abs(scores).ravel() if rank_by == "abs" else scores.ravel()
    return np.lexsort((np.arange(key.size), -key))[:n]


def as_layer_map(flat: np.ndarray, units_per_layer: int) -> dict[int, list[int]]:
    """Flat unit indices -> ``{layer: [unit, ...]}`` as the intervention takes them."""
    out: dict[int, list[int]] = {}
    for idx in sorted(int(i) for i in flat):
        layer, unit = divmod(idx, units_per_layer)
        out.setdefault(layer, []).append(unit)
    return out


def ablate_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    hits: pd.DataFrame,
    aggregate: CheckpointAggregate,
    sums: dict[str, ScoreSums],
    cfg: AblationConfig,
    *,
    seed: int = 0,
    batch_size: int = 32,
) -> DataFrame[AblationResult]:
    """Base, targeted and random-control HIT@10 at one checkpoint.

    The base HIT@10 is read from the evaluation stage's ``hits`` (same examples, unablated model), so only
    the interventions need forward passes.

    Units are ranked by the checkpoint's mean importance over the run's examples; with ``cfg.heldout`` they
    are ranked on the even-``sample_id`` half and evaluated on the odd half, so selection does not inflate
    the drop.
    """
    step = aggregate.step
    ranking = CheckpointAggregate.from_sums(step, sums, parity=0) if cfg.heldout else aggregate
    evaluated = samples[samples["sample_id"] % 2 == 1] if cfg.heldout else samples
    scores = ranking.scores(UNIT_SCORES[cfg.unit])  # [layers, units]
    n = unit_count(cfg, scores.size)

    def hit10(units: np.ndarray) -> float:
        chosen = as_layer_map(units, scores.shape[1])
        kwargs = {"heads": chosen} if cfg.unit == "head" else {"ffn_neurons": chosen}
        with ablate(model, **kwargs):
            hits = evaluate_checkpoint(model, tokenizer, evaluated, step=step, batch_size=batch_size)
        return hit_rate(hits["gold_rank"], K)

    evaluated_hits = hits.merge(evaluated[["relation", "sample_id"]], on=["relation", "sample_id"])
    base = hit_rate(evaluated_hits["gold_rank"], K)
    rows = [dict(condition="base", seed=-1, n_units=0, hit_at_10=base)]
    rows.append(
        dict(condition="targeted", seed=-1, n_units=n, hit_at_10=hit10(rank_units(scores, n, cfg.rank_by)))
    )
    for s in range(cfg.random_seeds):
        rng = np.random.default_rng([seed, s, step])
        rows.append(
            dict(
                condition="random",
                seed=s,
                n_units=n,
                hit_at_10=hit10(rng.choice(scores.size, n, replace=False)),
            )
        )
    table = pd.DataFrame(rows).assign(step=step, ablation=cfg.name, heldout=cfg.heldout)
    table["drop_percent"] = [drop_percent(base, h) for h in table["hit_at_10"]]
    return AblationResult.check(table[list(AblationResult.to_schema().columns)])


def ablation_metrics(table: DataFrame[AblationResult]) -> dict[str, float]:
    """MLflow metrics for one step, as fractions: ``ablation.hit_at_10.targeted``, ``ablation.drop.targeted``
    (0.45 = HIT@10 fell by 45% of its base) ...

    The drops are NaN (so not logged) when the base HIT@10 is below :data:`MIN_BASE_HIT10`: near chance the
    ratio divides by almost nothing and one chart point of -1000% flattens every other.
    """
    out = {}
    for condition in ("base", "targeted"):
        part = table[table["condition"] == condition]
        out[f"ablation.hit_at_10.{condition}"] = float(part["hit_at_10"].iloc[0])
    meaningful = out["ablation.hit_at_10.base"] >= MIN_BASE_HIT10
    targeted = table.loc[table["condition"] == "targeted", "drop_percent"].iloc[0]
    out["ablation.drop.targeted"] = float(targeted) / 100 if meaningful else float("nan")
    rand = table[table["condition"] == "random"]
    if len(rand):
        out["ablation.hit_at_10.random_mean"] = float(rand["hit_at_10"].mean())
        drops = rand["drop_percent"] / 100 if meaningful else rand["drop_percent"] * float("nan")
        out["ablation.drop.random_mean"] = float(drops.mean())
        out["ablation.drop.random_sd"] = float(drops.std(ddof=0))
    return out
