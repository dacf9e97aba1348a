"""The recipe of a tiny checkpoint suite: a serialisable dataclass, size presets, and where a suite lives.

This module imports nothing heavy (no torch), so the run configuration can embed :class:`SuiteSpec`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.paths import cache_root as user_cache

RECIPE_VERSION = 1
"""Bumped whenever the corpus, tokenizer or training code changes what a given spec produces."""

FAMILIES = ("olmoe", "olmo", "gpt_neox")
"""The families a suite can be built in (``model.py``); each is a registered adapter family."""
SIZES = ("tiny", "micro", "small")

PRESETS: dict[str, dict[str, int | float]] = {
    "tiny": dict(
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        ffn_width=64,
        num_experts=16,
        experts_per_token=2,
        vocab_size=1536,
        seq_len=64,
        batch_size=32,
        steps=800,
        num_checkpoints=13,
        lr=3e-3,
        warmup_steps=40,
    ),
    "micro": dict(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        ffn_width=32,
        num_experts=16,
        experts_per_token=2,
        vocab_size=1536,
        seq_len=48,
        batch_size=16,
        steps=240,
        num_checkpoints=7,
        lr=5e-3,
        warmup_steps=10,
    ),
    "small": dict(
        hidden_size=128,
        num_layers=8,
        num_heads=8,
        ffn_width=1280,
        num_experts=64,
        experts_per_token=8,
        expert_width=20,
        vocab_size=1536,
        seq_len=64,
        batch_size=16,
        steps=800,
        num_checkpoints=13,
        lr=3e-3,
        warmup_steps=40,
    ),
}
"""Defaults per ``size``; a spec field left at 0 (or None) takes the preset's value."""

_NOT_HASHED = ("name", "cache_dir", "threads")
_HASHED_WHEN_SET = ("head_dim", "expert_width")
"""Fields added after suites were first cached: hashed only when non-zero, so older suites keep their hash."""


@dataclass
class SuiteSpec:
    """How to pre-train one tiny suite: architecture, corpus, schedule and where to cache it.

    Numeric fields left at ``0`` (``checkpoint_steps`` at ``None``) take the value of the ``size`` preset
    (:data:`PRESETS`); :meth:`resolved` fills them in. Two specs with the same ``size``, seed and overrides
    but different ``family`` share architecture (except the FFN), data, data order and schedule.
    """

    name: str = "tiny_moe"
    """Display name; the cache folder is ``<name>-<config_hash>``."""
    family: str = "olmoe"
    """``olmoe`` (``OlmoeForCausalLM``, sparse MoE FFN), ``olmo`` (``OlmoForCausalLM``, dense FFN) or
    ``gpt_neox`` (``GPTNeoXForCausalLM``, Pythia's architecture: parallel residual, dense FFN)."""
    size: str = "tiny"
    """Preset for dimensions and schedule: ``tiny`` (the embedded default), ``micro`` (for tests) or
    ``small`` (populations large enough for neuron-level metrics; see experiments/small_suites)."""
    seed: int = 0
    """Seeds weight init, the corpus (fact frequencies, filler, data order) and nothing else."""
    steps: int = 0
    """Optimiser steps in total (0: preset)."""
    checkpoint_steps: list[int] | None = None
    """Steps at which a checkpoint is saved; must include 0 and ``steps``. None: ``num_checkpoints``
    log-spaced steps (denser early)."""
    num_checkpoints: int = 0
    """How many log-spaced checkpoints (step 0 included) when ``checkpoint_steps`` is None (0: preset)."""
    batch_size: int = 0
    """Sequences per step (0: preset). Tokens per step = ``batch_size * seq_len``."""
    seq_len: int = 0
    """Tokens per training sequence (0: preset)."""
    lr: float = 0.0
    """Peak AdamW learning rate after linear warm-up, then cosine decay to 10% (0: preset)."""
    warmup_steps: int = 0
    """Linear warm-up steps (0: preset)."""
    hidden_size: int = 0
    """Residual width d (0: preset)."""
    num_layers: int = 0
    """Transformer layers (0: preset)."""
    num_heads: int = 0
    """Attention heads (0: preset)."""
    head_dim: int = 0
    """Width of one head; ``num_heads * head_dim`` may exceed ``hidden_size`` (0: the preset's, else
    ``hidden_size / num_heads``)."""
    ffn_width: int = 0
    """The dense FFN's width; also the MoE's active width per token (top-k x expert width) unless
    ``expert_width`` is set (0: preset)."""
    num_experts: int = 0
    """MoE experts per layer (ignored by the dense family) (0: preset)."""
    experts_per_token: int = 0
    """MoE top-k (0: preset)."""
    expert_width: int = 0
    """Neurons per expert (0: the preset's, else ``ffn_width / experts_per_token``, which matches the dense
    partner's active width per token; ``num_experts * expert_width = ffn_width`` matches its total FFN
    parameters instead)."""
    router_aux_loss_coef: float = 0.01
    """Weight of the router load-balancing loss (MoE only; ``output_router_logits`` is on)."""
    vocab_size: int = 0
    """Target size of the byte-level BPE vocabulary trained on the corpus (0: preset)."""
    relations: str = "bundled"
    """Relation source passed to ``gated_lpi_exp.data.load_relations``."""
    fact_share: float = 0.6
    """Share of corpus sentences that state a fact; the rest is filler from a small grammar."""
    zipf_exponent: float = 0.8
    """Fact frequencies follow ``rank ** -zipf_exponent`` over a seeded random ranking of all facts."""
    holdout_eval_template: bool = False
    """Keep the evaluation template ``zs:0`` out of the training corpus (False: it is one of the phrasings,
    as a real corpus would contain the evaluation's wording too)."""
    drop_eval_extensions: bool = True
    """Leave out phrasings that continue the evaluation prompt with other words (``"The capital city of {}
    is called"`` after ``"The capital city of {} is"``): with them the corpus itself follows the evaluation
    prompt by a non-object about half the time, which caps that relation's HIT@1 near 1/2."""
    cache_dir: str | None = None
    """Folder holding suites; None: ``$GATED_LPI_CACHE/suites``, else
    ``$XDG_CACHE_HOME/gated_lpi_exp/suites``, else ``~/.cache/gated_lpi_exp/suites``."""
    threads: int = 1
    """torch threads while building. Weights are bit-identical for a fixed thread count on one machine; one
    thread is about as fast as two for these sizes and degrades far less on a busy machine."""

    def resolved(self) -> SuiteSpec:
        """A copy with every preset-backed field filled in and the values checked.

        Raises:
            ConfigurationError: an unknown family or size, or values that do not fit together.
        """
        if self.family not in FAMILIES:
            raise ConfigurationError(f"suite.family={self.family!r} is not valid; choose one of {FAMILIES}.")
        if self.size not in SIZES:
            raise ConfigurationError(f"suite.size={self.size!r} is not valid; choose one of {SIZES}.")
        preset = PRESETS[self.size]
        filled = {k: (v if getattr(self, k) in (0, 0.0) else getattr(self, k)) for k, v in preset.items()}
        spec = replace(self, **filled)
        if spec.checkpoint_steps is None:
            spec.checkpoint_steps = log_spaced_steps(spec.steps, spec.num_checkpoints)
        spec.checkpoint_steps = sorted({int(s) for s in spec.checkpoint_steps})
        _check(spec)
        return spec

    def config_hash(self) -> str:
        """Hash of everything that affects the weights (not ``name``, ``cache_dir`` or ``threads``).

        Includes the recipe version and a fingerprint of the relation data the corpus is made from.
        """
        spec = self.resolved()
        payload = {
            f.name: getattr(spec, f.name)
            for f in fields(spec)
            if f.name not in _NOT_HASHED and not (f.name in _HASHED_WHEN_SET and not getattr(spec, f.name))
        }
        payload["recipe_version"] = RECIPE_VERSION
        payload["relations_fingerprint"] = _relations_fingerprint(spec.relations)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def attention_head_dim(self) -> int:
        """The width of one head: ``head_dim``, else ``hidden_size / num_heads`` (on a resolved spec)."""
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def expert_neurons(self) -> int:
        """Neurons per expert: ``expert_width``, else ``ffn_width / experts_per_token`` (on a resolved spec)."""
        return self.expert_width or self.ffn_width // self.experts_per_token

    def to_dict(self) -> dict:
        """Plain-dict form (for manifests and logs)."""
        return asdict(self)


def log_spaced_steps(steps: int, count: int) -> list[int]:
    """Step 0 plus ``count - 1`` roughly log-spaced steps ending at ``steps`` (denser early)."""
    if count < 2 or steps < 1:
        raise ConfigurationError(
            f"need steps >= 1 and at least 2 checkpoints, got steps={steps}, count={count}."
        )
    # The first checkpoint after 0 comes at 2% of training: earlier ones all sit on the flat start.
    first = max(1, round(steps / 50))
    out = {0, steps}
    for i in range(count - 1):
        out.add(round(math.exp(math.log(first) + i * (math.log(steps) - math.log(first)) / (count - 2 or 1))))
    return sorted(out)


def _check(spec: SuiteSpec) -> None:
    steps = spec.checkpoint_steps or []
    problems = []
    if steps[0] != 0 or steps[-1] != spec.steps:
        problems.append(f"checkpoint_steps must start at 0 and end at steps={spec.steps}, got {steps}")
    if not spec.head_dim and spec.hidden_size % spec.num_heads:
        problems.append(f"hidden_size={spec.hidden_size} is not divisible by num_heads={spec.num_heads}")
    if spec.family == "olmoe" and spec.head_dim and spec.head_dim * spec.num_heads != spec.hidden_size:
        # OlmoeAttention builds its QK-norm with hidden_size entries and applies it to heads x head_dim.
        problems.append(
            f"num_heads x head_dim = {spec.num_heads * spec.head_dim} must equal hidden_size="
            f"{spec.hidden_size} for family olmoe (transformers sizes the OLMoE QK-norm by hidden_size)"
        )
    if not spec.expert_width and spec.ffn_width % spec.experts_per_token:
        problems.append(
            f"ffn_width={spec.ffn_width} is not divisible by experts_per_token={spec.experts_per_token}"
        )
    if spec.family == "olmoe" and spec.expert_neurons % 4:
        problems.append(
            f"the expert width {spec.expert_neurons} must be a multiple of 4 (transformers' grouped_mm "
            "experts kernel needs 16-byte strides)"
        )
    if spec.experts_per_token > spec.num_experts:
        problems.append("experts_per_token exceeds num_experts")
    if not 0.0 < spec.fact_share <= 1.0:
        problems.append(f"fact_share={spec.fact_share} must be in (0, 1]")
    if problems:
        raise ConfigurationError("Invalid suite spec: " + "; ".join(problems) + ".")


@functools.lru_cache(maxsize=8)
def _relations_fingerprint(source: str) -> str:
    """Content hash of the relation files behind ``source`` (a changed fact changes the suite)."""
    from gated_lpi_exp.suites.facts import relations_fingerprint

    return relations_fingerprint(source)


def cache_root() -> Path:
    """Where suites are cached when a spec names no ``cache_dir``: ``<user cache>/suites``."""
    return user_cache() / "suites"


def suite_dir(spec: SuiteSpec) -> Path:
    """The folder of a suite: ``<cache>/<name>-<config_hash>``."""
    root = Path(spec.cache_dir).expanduser() if spec.cache_dir else cache_root()
    return root / f"{spec.name}-{spec.config_hash()}"
