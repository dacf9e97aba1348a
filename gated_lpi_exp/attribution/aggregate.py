"""Per-checkpoint attribution aggregates: mean Gated-LPI per unit over a set of examples.

The attribution stage stores, per checkpoint and relation, the *sums* of every score over the relation's
examples split by sample parity (even / odd ``sample_id``). Any relation subset's mean, and the two halves of
a held-out split, follow from those sums without recomputing attribution.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

UNIT_KINDS = ("ffn", "attn", "heads", "ffn_layer", "attn_layer")
"""Score arrays kept per checkpoint: neurons [layers, n], heads [layers, heads], layers [layers]."""


@dataclass
class ScoreSums:
    """Sums of scores over examples, split by sample parity: every array has a leading axis of 2."""

    sums: dict[str, np.ndarray]  # kind -> [2, layers, n] or [2, layers]
    counts: np.ndarray  # [2] examples per parity

    def __add__(self, other: ScoreSums) -> ScoreSums:
        return ScoreSums({k: self.sums[k] + other.sums[k] for k in self.sums}, self.counts + other.counts)

    @classmethod
    def total(cls, parts: Iterable[ScoreSums]) -> ScoreSums:
        parts = list(parts)
        if not parts:
            raise ValueError("no score sums to add up")
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out

    def mean(self, parity: int | None = None) -> dict[str, np.ndarray]:
        """Mean over all examples (``parity=None``) or over the even (0) / odd (1) half."""
        if parity is None:
            n = self.counts.sum()
            return {k: v.sum(axis=0) / max(n, 1) for k, v in self.sums.items()}
        n = self.counts[parity]
        return {k: v[parity] / max(n, 1) for k, v in self.sums.items()}


@dataclass
class CheckpointAggregate:
    """Mean importance of every unit at one checkpoint, over the run's examples (zeros included)."""

    step: int
    """Training step."""
    ffn: np.ndarray  # [layers, ffn_neurons] (MoE: experts * expert width, expert-major)
    attn: np.ndarray  # [layers, heads * head_dim]
    heads: np.ndarray  # [layers, heads]
    ffn_layer: np.ndarray  # [layers]
    attn_layer: np.ndarray  # [layers]
    n_examples: int
    per_relation: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Relation -> kind -> mean array, for per-relation tables."""
    replicates: dict[str, np.ndarray] | None = None
    """Kind -> bootstrap replicates of the mean ``[R, ...]`` (``gated_lpi_exp.attribution.replicates``);
    None when intervals are off."""

    @classmethod
    def from_sums(
        cls, step: int, by_relation: dict[str, ScoreSums], parity: int | None = None
    ) -> CheckpointAggregate:
        """Aggregate from per-relation sums; ``parity`` restricts to one half of a held-out split."""
        total = ScoreSums.total(by_relation.values())
        means = total.mean(parity)
        n = int(total.counts.sum() if parity is None else total.counts[parity])
        per_rel = {rel: sums.mean(parity) for rel, sums in by_relation.items()}
        return cls(step=step, n_examples=n, per_relation=per_rel, **means)

    def scores(self, kind: str) -> np.ndarray:
        """The array of one unit kind (see :data:`UNIT_KINDS`)."""
        if kind not in UNIT_KINDS:
            raise KeyError(f"unknown unit kind {kind!r}; choose one of {UNIT_KINDS}")
        return getattr(self, kind)


def stack(aggregates: list[CheckpointAggregate], kind: str) -> np.ndarray:
    """Scores of ``kind`` over checkpoints in step order: [checkpoints, ...]."""
    ordered = sorted(aggregates, key=lambda a: a.step)
    return np.stack([a.scores(kind) for a in ordered])
