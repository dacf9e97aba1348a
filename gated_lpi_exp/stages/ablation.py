"""The ablation stage: HIT@10 with the most important units zeroed, against matched random controls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate, ScoreSums
from gated_lpi_exp.config import AblationConfig, StatisticsConfig
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.interventions import ablate
from gated_lpi_exp.metrics import MIN_BASE_HIT10, drop_percent
from gated_lpi_exp.metrics.bootstrap import drop_percent_replicates, percentile_interval
from gated_lpi_exp.schemas import AblationExamples, AblationResult, DataFrame
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint, example_weights_of

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
    statistics: StatisticsConfig | None = None,
) -> tuple[DataFrame[AblationResult], DataFrame[AblationExamples]]:
    """Base, targeted and random-control HIT@10 at one checkpoint, with each example's outcome.

    The base HIT@10 is read from the evaluation stage's ``hits`` (same examples, unablated model), so only
    the interventions need forward passes.

    Units are ranked by the checkpoint's mean importance over the run's examples; with ``cfg.heldout`` they
    are ranked on the even-``sample_id`` half and evaluated on the odd half, so selection does not inflate
    the drop. With ``statistics`` each drop gets a bootstrap interval over the evaluated examples, the chosen
    units held fixed (the interval is about which facts are asked, not about which units are picked).

    Returns:
        ``(table, examples)``: one row per condition (and random seed), and per example its 0/1 HIT@10
        under each condition (for intervals over several checkpoints, and targeted minus random).
    """
    step = aggregate.step
    ranking = CheckpointAggregate.from_sums(step, sums, parity=0) if cfg.heldout else aggregate
    evaluated = samples[samples["sample_id"] % 2 == 1] if cfg.heldout else samples
    keys = evaluated[["relation", "sample_id"]].reset_index(drop=True)
    scores = ranking.scores(UNIT_SCORES[cfg.unit])  # [layers, units]
    n = unit_count(cfg, scores.size)

    def outcome(condition: str, seed_: int, ranks: pd.DataFrame) -> pd.DataFrame:
        table = keys.merge(ranks[["relation", "sample_id", "gold_rank"]], on=["relation", "sample_id"])
        hit = (table["gold_rank"] <= K).astype(int)  # per example: the indicator hit_rate averages
        return keys.assign(condition=condition, seed=seed_, hit_at_10=hit.to_numpy())

    def ablated(units: np.ndarray) -> pd.DataFrame:
        chosen = as_layer_map(units, scores.shape[1])
        kwargs = {"heads": chosen} if cfg.unit == "head" else {"ffn_neurons": chosen}
        with ablate(model, **kwargs):
            return evaluate_checkpoint(model, tokenizer, evaluated, step=step, batch_size=batch_size)

    parts = [outcome("base", -1, hits), outcome("targeted", -1, ablated(rank_units(scores, n, cfg.rank_by)))]
    for s in range(cfg.random_seeds):
        rng = np.random.default_rng([seed, s, step])
        parts.append(outcome("random", s, ablated(rng.choice(scores.size, n, replace=False))))
    examples = pd.concat(parts, ignore_index=True).assign(step=step, ablation=cfg.name)
    table = _condition_rows(examples, n, statistics).assign(heldout=cfg.heldout)
    return (
        AblationResult.check(table[list(AblationResult.to_schema().columns)]),
        AblationExamples.check(examples[list(AblationExamples.to_schema().columns)]),
    )


def _condition_rows(
    examples: pd.DataFrame, n_units: int, statistics: StatisticsConfig | None
) -> pd.DataFrame:
    """One row per (condition, seed): HIT@10, drop % against base and its bootstrap interval."""
    base = examples[examples["condition"] == "base"]
    weights = example_weights_of(base, statistics)  # [R, n] in base's example order, or None
    level = statistics.level if statistics is not None else 0.95
    base_hits = base["hit_at_10"].to_numpy()
    rows = []
    for (condition, seed), part in examples.groupby(["condition", "seed"], sort=False):
        hits = part["hit_at_10"].to_numpy()  # same example order as base (built from the same keys)
        low = high = math.nan
        if weights is not None and condition != "base":
            interval = percentile_interval(drop_percent_replicates(base_hits, hits, weights), level)
            low, high = float(interval[0]), float(interval[1])
        rows.append(
            dict(condition=condition, seed=seed, n_units=0 if condition == "base" else n_units,
                 hit_at_10=float(hits.mean()), drop_percent=drop_percent(base_hits.mean(), hits.mean()),
                 drop_ci_low=float(low), drop_ci_high=float(high))
        )  # fmt: skip
    first = examples.iloc[0]
    return pd.DataFrame(rows).assign(step=first["step"], ablation=first["ablation"])


def ablation_metrics(table: DataFrame[AblationResult]) -> dict[str, float]:
    """MLflow metrics for one step, as fractions: ``ablation.hit_at_10.targeted``, ``ablation.drop.targeted``
    (0.45 = HIT@10 fell by 45% of its base) ...

    The targeted drop's bootstrap interval is ``ablation.drop.targeted.ci_low`` / ``.ci_high`` (NaN without
    ``statistics``). The drops and their intervals are NaN (so not logged) when the base HIT@10 is below
    :data:`MIN_BASE_HIT10`: near chance the ratio divides by almost nothing and one chart point of -1000%
    flattens every other.
    """
    out = {}
    for condition in ("base", "targeted"):
        part = table[table["condition"] == condition]
        out[f"ablation.hit_at_10.{condition}"] = float(part["hit_at_10"].iloc[0])
    meaningful = out["ablation.hit_at_10.base"] >= MIN_BASE_HIT10
    targeted = table[table["condition"] == "targeted"].iloc[0]
    for name, column in (("", "drop_percent"), (".ci_low", "drop_ci_low"), (".ci_high", "drop_ci_high")):
        value = float(targeted.get(column, math.nan))  # the interval columns are optional in the schema
        out[f"ablation.drop.targeted{name}"] = value / 100 if meaningful else math.nan
    rand = table[table["condition"] == "random"]
    if len(rand):
        out["ablation.hit_at_10.random_mean"] = float(rand["hit_at_10"].mean())
        drops = rand["drop_percent"] / 100 if meaningful else rand["drop_percent"] * float("nan")
        out["ablation.drop.random_mean"] = float(drops.mean())
        out["ablation.drop.random_sd"] = float(drops.std(ddof=0))
    return out
