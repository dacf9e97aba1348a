"""The three findings of the MoE-vs-dense comparison, each judged from a MoE column against a dense column.

Every finding is a list of claims, each a registered measure with the direction the finding predicts (the MoE
higher or lower than the dense model). A claim's outcome:

- **as predicted**: MoE − dense lies on the predicted side with its bootstrap interval excluding 0, and every
  MoE suite seed is on that side of every dense suite seed;
- **opposite**: the same, on the other side;
- **no clear difference**: anything in between (the interval covers 0, or the seeds disagree);
- **not testable**: a value is missing or undefined (not computed, ablation not run, no checkpoint that knows
  the facts).

The interval of MoE − dense is the percentile interval of the replicate-wise difference: every run resamples
the same examples in replicate ``r`` (weights keyed by the example and ``statistics.seed``), so the two columns'
replicates are paired. A finding is **reproduced** when all its claims are as predicted, **not reproduced**
when none is, **partly reproduced** otherwise, and **not testable** when no claim is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gated_lpi_exp.adapters import MOE_FAMILIES
from gated_lpi_exp.metrics import get_metric
from gated_lpi_exp.metrics.bootstrap import percentile_interval
from gated_lpi_exp.report.runs import Column
from gated_lpi_exp.report.seeds import Combined, drop_values, level_of, summary_value
from gated_lpi_exp.tracking.names import FAMILY_TAG


@dataclass(frozen=True)
class Finding:
    key: str
    title: str
    statement: str


@dataclass(frozen=True)
class Claim:
    """One measure of a finding and the direction it predicts.

    ``metric``/``unit``/``window`` name a ``dynamics_summary`` value; with ``ablation`` set, the claim is on
    that ablation's HIT@10 drop, targeted minus random control (what the targeted units cost beyond as many
    random ones).
    """

    finding: str
    metric: str
    unit: str = ""
    window: str = "all"
    ablation: str = ""
    moe_higher: bool = True

    @property
    def label(self) -> str:
        if self.ablation:
            return f"{self.ablation}: HIT@10 drop (%), targeted − random"
        spec = get_metric(self.metric)
        return f"{spec.label} {self.unit.upper()}{spec.display.suffix}"


FINDINGS = (
    Finding(
        "backbone",
        "Low-entropy MoE backbone",
        "a few MoE FFN neurons take most of the positive importance gains and stay the top set from checkpoint "
        "to checkpoint, where the dense model's top set churns",
    ),
    Finding(
        "consolidation",
        "Early consolidation",
        "the MoE's layer-importance profile (FFN and ATTN) settles and stays, where the dense model's keeps "
        "moving",
    ),
    Finding(
        "robustness",
        "Functional robustness",
        "masking the MoE's most important heads or FFN neurons costs it less HIT@10 than the same masking "
        "costs the dense model",
    ),
)
CLAIMS = (
    Claim("backbone", "r_t", "ffn"),
    Claim("backbone", "j_stab", "ffn"),
    Claim("consolidation", "rho_avg", "ffn"),
    Claim("consolidation", "sigma_rel", "ffn", moe_higher=False),
    Claim("consolidation", "rho_avg", "attn"),
    Claim("consolidation", "sigma_rel", "attn", moe_higher=False),
    Claim("robustness", "drop_percent", ablation="top10_heads", moe_higher=False),
    Claim("robustness", "drop_percent", ablation="top1pct_ffn", moe_higher=False),
)
AS_PREDICTED, OPPOSITE, UNCLEAR, UNTESTABLE = (
    "as predicted",
    "opposite",
    "no clear difference",
    "not testable",
)
FINDINGS_HEADERS = ["finding", "measure", "MoE", "dense", "MoE − dense [interval]", "seeds", "outcome"]
VERDICT_HEADERS = ["finding", "pair", "verdict", "claims as predicted"]


@dataclass
class Judged:
    """One claim measured on one MoE/dense pair."""

    claim: Claim
    moe: Combined | None
    dense: Combined | None
    difference: float = math.nan
    ci: tuple[float, float] | None = None
    seeds: str = ""
    outcome: str = UNTESTABLE


@dataclass
class FindingsTable:
    """The findings of one report section: per pair of columns, every claim and each finding's verdict."""

    lines: list[list[str]]
    verdicts: list[list[str]]
    notes: list[str]


def is_moe(column: Column) -> bool:
    family = column.runs[0].tags.get(FAMILY_TAG) or column.param("model.family") or ""
    return family in MOE_FAMILIES


def claim_value(column: Column, claim: Claim, min_base: float) -> Combined | None:
    """The claim's measure in one column, combined over its seeds (None: not computed or not run; NaN: no
    checkpoint qualifies)."""
    if claim.ablation:
        tables = [column.table("ablation", seed) for seed in column.seeds]
        if not any(t is not None and (t["ablation"] == claim.ablation).any() for t in tables):
            return None
        found = drop_values(column, claim.ablation, min_base)["difference"]
        return found if found is not None else Combined(math.nan)
    return summary_value(column, claim.metric, claim.unit, claim.window)


def judge(claim: Claim, moe: Combined | None, dense: Combined | None, level: float) -> Judged:
    """The claim's outcome on one pair (rules in the module docstring)."""
    out = Judged(claim, moe, dense)
    if moe is None or dense is None or math.isnan(moe.value) or math.isnan(dense.value):
        return out
    sign = 1.0 if claim.moe_higher else -1.0
    out.difference = moe.value - dense.value
    m, d = moe.replicates, dense.replicates
    if m is not None and d is not None and len(m) == len(d):
        low, high = percentile_interval(m - d, level)  # paired: replicate r resamples the same examples
        out.ci = (float(low), float(high))
    pairs = [sign * (m - d) for m in moe.per_seed for d in dense.per_seed]
    ahead = sum(p > 0 for p in pairs)
    out.seeds = f"{ahead} of {len(pairs)} seed pairs as predicted"
    if out.ci is None or math.isnan(out.ci[0]):
        out.outcome = UNCLEAR
        return out
    near, far = sorted((sign * out.ci[0], sign * out.ci[1]))
    if near > 0 and ahead == len(pairs):
        out.outcome = AS_PREDICTED
    elif far < 0 and ahead == 0:
        out.outcome = OPPOSITE
    else:
        out.outcome = UNCLEAR
    return out


def verdict(judged: list[Judged]) -> tuple[str, str]:
    """A finding's verdict from its claims, and the count ``k of n`` of claims as predicted."""
    testable = [j for j in judged if j.outcome != UNTESTABLE]
    hits = sum(j.outcome == AS_PREDICTED for j in judged)
    count = f"{hits} of {len(judged)}" + (
        f" ({len(judged) - len(testable)} not testable)" if len(testable) < len(judged) else ""
    )
    if not testable:
        return UNTESTABLE, count
    if hits == len(judged):
        return "reproduced", count
    return ("not reproduced" if hits == 0 else "partly reproduced"), count


def _value_text(claim: Claim, value: Combined | None) -> str:
    if value is None:
        return "not computed" if not claim.ablation else "ablation not run"
    if math.isnan(value.value):
        return "undefined" if not claim.ablation else "no checkpoint knows the facts"
    display = get_metric(claim.metric).display
    fmt = f".{display.digits}f"
    text = f"{value.value * display.scale:{fmt}}"
    if value.ci is not None and not math.isnan(value.ci[0]):
        text += f" [{value.ci[0] * display.scale:{fmt}}, {value.ci[1] * display.scale:{fmt}}]"
    if value.sd is not None:
        text += f" ± {value.sd * display.scale:{fmt}} sd ({value.n_seeds} seeds)"
    if value.baseline is not None and not math.isnan(value.baseline):
        text += f" · random {value.baseline * display.scale:{fmt}}"
    return text


def _difference_text(judged: Judged) -> str:
    if math.isnan(judged.difference):
        return "—"
    display = get_metric(judged.claim.metric).display
    fmt = f"+.{display.digits}f"
    text = f"{judged.difference * display.scale:{fmt}}"
    if judged.ci is not None and not math.isnan(judged.ci[0]):
        low, high = (v * display.scale for v in judged.ci)
        text += f" [{low:{fmt}}, {high:{fmt}}]"
    return text


def findings_table(columns: list[Column], min_base: float) -> FindingsTable | None:
    """Every finding judged on every (MoE column, dense column) pair of a section; None without such a pair."""
    moes = [c for c in columns if is_moe(c)]
    denses = [c for c in columns if not is_moe(c)]
    if not moes or not denses:
        return None
    titles = {f.key: f.title for f in FINDINGS}
    level = level_of(moes[0])
    lines: list[list[str]] = []
    verdicts: list[list[str]] = []
    for moe in moes:
        for dense in denses:
            pair = f"{moe.label} vs {dense.label}"
            judged = [
                judge(c, claim_value(moe, c, min_base), claim_value(dense, c, min_base), level)
                for c in CLAIMS
            ]
            for j in judged:
                arrow = "MoE higher" if j.claim.moe_higher else "MoE lower"
                lines.append([
                    titles[j.claim.finding], f"{j.claim.label} ({arrow}); {pair}", _value_text(j.claim, j.moe),
                    _value_text(j.claim, j.dense), _difference_text(j), j.seeds, j.outcome,
                ])  # fmt: skip
            for finding in FINDINGS:
                mine = [j for j in judged if j.claim.finding == finding.key]
                verdicts.append([finding.title, pair, *verdict(mine)])
    notes = [f"{f.title}: {f.statement}." for f in FINDINGS]
    notes.append(
        f"Outcome: 'as predicted' when MoE − dense is on the predicted side with its {level:.0%} bootstrap "
        "interval (paired replicates: every run resamples the same examples) excluding 0 and every MoE "
        "suite seed is on that side of every dense suite seed; 'opposite' likewise the other way; otherwise "
        "'no clear difference'; 'not testable' when a value is missing. Drops: the mean over the checkpoints "
        f"whose unablated HIT@10 is at least {min_base:g}."
    )
    return FindingsTable(lines, verdicts, notes)


__all__ = ["CLAIMS", "FINDINGS", "FindingsTable", "findings_table", "judge", "verdict"]
