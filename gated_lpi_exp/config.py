"""Structured run configuration: one dataclass per Hydra config group.

Fields are serialisable values, each documented under its declaration. Hydra checks types and unknown keys
when it composes the YAML files in ``conf/`` onto these schemas; ``__post_init__`` checks values when the
composed config is turned into objects (:func:`to_run_config`), so a bad value fails before any model loads
and names the valid choices.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gated_lpi_exp.adapters import FAMILIES
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.suites.spec import SuiteSpec

DEFAULT_BRANCHES = r"^step(?P<step>\d+)(?:-tokens(?P<tokens>\d+)B)?$"
"""OLMo/OLMoE hub branches: ``step{N}-tokens{M}B`` (or a bare ``step{N}``)."""

CATEGORIES = ("linguistic", "commonsense", "factual", "bias")
ABLATION_UNITS = ("none", "head", "ffn_neuron")
"""What an ablation can zero; its presets are the files ``conf/ablation/*.yaml``, their names are labels."""
COMPAT_MODES = ("none", "released_code")
"""Values of ``attribution.compat`` (``gated_lpi_exp.compat``)."""
POSITION_REDUCTIONS = ("absmax", "max", "sum")
"""How per-position attention-neuron scores become one per neuron (``attribution.positions.reduce_positions``)."""


def _choice(section: str, key: str, value: Any, valid: Iterable[Any]) -> None:
    valid = tuple(valid)
    if value != MISSING and value not in valid:  # MISSING: a schema default, checked once composed
        raise ConfigurationError(
            f"{section}.{key}={value!r} is not valid; choose one of: {', '.join(map(str, valid))}."
        )


def _at_least(section: str, key: str, value: Any, low: int | float, *, optional: bool = False) -> None:
    """Raise unless ``value`` is a number >= ``low`` (or None when ``optional``); the message names the range."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        allowed = f"a number >= {low}" + (" or null" if optional else "")
        name = f"{section}.{key}" if section else key
        raise ConfigurationError(f"{name}={value!r} is not valid; use {allowed}.")


@dataclass
class ModelConfig:
    """Which model family and checkpoint series to analyse, and how to load it."""

    name: str = MISSING
    """Display name, used in run names and figure legends."""
    family: str = MISSING
    """Architecture family: the checkpoints' ``model_type`` (``olmoe``, ``olmo``, ``llama``, ``gpt_neox``,
    ... : every family of ``gated_lpi_exp.adapters.FAMILIES``). A checkpoint of another type is refused."""
    kind: str = "hub"
    """``hub`` (a model-hub repository with one branch per checkpoint), ``local`` (a folder of
    ``step{N}/`` checkpoints with a manifest) or ``suite`` (one of the project's own tiny suites, built on
    first use)."""
    source: str = MISSING
    """Hub repository id, local folder, or suite name, depending on ``kind``."""
    size: str | None = None
    """Model size, for series configs that take it as a field (``model=pythia model.size=1b``); their
    ``name`` and ``source`` interpolate it. None for series of one size."""
    sizes: list[str] = field(default_factory=list)
    """The sizes the series exists in; ``size`` must be one of them (empty: not checked)."""
    branch_pattern: str = DEFAULT_BRANCHES
    """Regular expression a hub branch must match to be a checkpoint: a named group ``step`` (the training
    step) and optionally ``tokens`` (training tokens in billions). Other branches (``main``) are ignored.
    Each series config sets its own (Pythia ``step{N}``, OLMo-2 ``stage1-step{N}-tokens{M}B``, Amber
    ``ckpt_{NNN}``)."""
    tokens_per_step: int | None = None
    """Training tokens per step, for series whose branch names do not carry them (Pythia: 2097152); None
    leaves the token count unknown."""
    dtype: str = "auto"
    """Weight dtype: ``auto`` (as saved), ``float32``, ``bfloat16`` or ``float16``. Attribution math is float32
    whatever this says."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    attn_implementation: str = "sdpa"
    """``sdpa`` or ``eager``; attribution reads the ``o_proj`` input, which needs neither."""
    trust_remote_code: bool = False
    """Run code shipped with a hub repository. Off unless set explicitly."""
    verify_checksums: bool = True
    """Check each local checkpoint's files against the sha256 its series manifest recorded before loading
    it. Hashing is remembered per file version, so only new or changed files are read; set false to skip it
    for very large copies of hub checkpoints (hub downloads are checked against the hub's own hashes)."""
    series_end: int | None = None
    """Last pre-training step of the series as the paper analyses it (1.2M OLMoE, 600K OLMo-7B): the end of
    the ``checkpoints=paper`` grid. None: the series' last checkpoint."""
    suite: SuiteSpec = field(default_factory=SuiteSpec)
    """The tiny-suite recipe, used when ``kind=suite``."""

    def __post_init__(self) -> None:
        _choice("model", "family", self.family, FAMILIES)
        _choice("model", "kind", self.kind, ("hub", "local", "suite"))
        _choice("model", "dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice("model", "attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigurationError(
                f"model.device={self.device!r} is not valid; choose auto, cpu, cuda, cuda:N or mps."
            )
        self._check_series()
        if self.series_end is not None and self.series_end < 0:
            raise ConfigurationError(f"model.series_end={self.series_end} must be a step >= 0 (or null).")
        if self.kind == "suite" and self.suite.family != self.family:
            raise ConfigurationError(
                f"model.family={self.family!r} but model.suite.family={self.suite.family!r}; they must agree."
            )

    def _check_series(self) -> None:
        if self.sizes and self.size not in self.sizes:
            raise ConfigurationError(
                f"model.size={self.size!r} is not a size of this series; choose one of: {', '.join(self.sizes)}."
            )
        try:
            groups = re.compile(self.branch_pattern).groupindex
        except re.error as exc:
            raise ConfigurationError(
                f"model.branch_pattern={self.branch_pattern!r} is not a regular expression ({exc})."
            ) from None
        if "step" not in groups:
            raise ConfigurationError(
                f"model.branch_pattern={self.branch_pattern!r} has no (?P<step>...) group; it must capture "
                "the training step, e.g. '^step(?P<step>\\d+)$'."
            )


@dataclass
class CheckpointsConfig:
    """Which checkpoints of the series to walk, in training-step order."""

    select: str = "all"
    """``all`` (every checkpoint), ``steps`` (the explicit ``steps`` list), ``range`` (``start``..``stop``
    inclusive, keeping steps divisible by ``every``), ``grid`` (the steps of the ``grid`` segments) or
    ``revisions`` (the explicit ``revisions`` list)."""
    steps: list[int] = field(default_factory=list)
    """Explicit training steps, for ``select=steps``."""
    grid: list[list[Any]] = field(default_factory=list)
    """For ``select=grid``: segments ``[start, stop, every]`` (``start``, ``start + every``, ... up to
    ``stop`` inclusive); a null ``stop`` is ``model.series_end``, else the series' last checkpoint. Each step
    is then matched as ``match`` says (the paper's grid: ``[[10000, 70000, 10000], [100000, null, 100000]]``
    with ``match=nearest``)."""
    start: int | None = None
    """First step of a ``range`` (inclusive); None = from the first checkpoint."""
    stop: int | None = None
    """Last step of a ``range`` (inclusive); None = to the last checkpoint."""
    every: int | None = None
    """Keep only steps divisible by this, for ``range``; None keeps every available step."""
    revisions: list[str] = field(default_factory=list)
    """For ``select=revisions``: hub branch names (``step5000-tokens20B``), the commit ids they point at
    (full, or a unique prefix of 7+ hex digits; the ``commit`` column of a run's checkpoints table), or local
    step folder names (``step10``)."""
    match: str = "exact"
    """For ``select=steps``: ``exact`` (the step must exist) or ``nearest`` (the closest existing step;
    the mapping is reported)."""
    missing: str = "warn"
    """A requested step that does not exist, or a hub checkpoint whose download fails for good: ``warn``
    (skip it, say so) or ``fail`` (stop the run; finished checkpoints stay in the result store)."""
    limit: int | None = None
    """Keep at most this many checkpoints, evenly spread (first and last kept); None keeps all."""

    def __post_init__(self) -> None:
        _choice("checkpoints", "select", self.select, ("all", "steps", "range", "grid", "revisions"))
        _choice("checkpoints", "match", self.match, ("exact", "nearest"))
        _choice("checkpoints", "missing", self.missing, ("warn", "fail"))
        if self.select == "steps" and not self.steps:
            raise ConfigurationError(
                "checkpoints.select=steps needs a non-empty checkpoints.steps=[...] list."
            )
        if self.select == "grid":
            check_grid(self.grid)
        if self.select == "revisions" and not self.revisions:
            raise ConfigurationError(
                "checkpoints.select=revisions needs a non-empty checkpoints.revisions=[...] list."
            )
        if self.every is not None and self.every <= 0:
            raise ConfigurationError(f"checkpoints.every={self.every} must be a positive number of steps.")
        if self.limit is not None and self.limit < 1:
            raise ConfigurationError(f"checkpoints.limit={self.limit} must be at least 1.")
        for step in self.steps:
            _at_least("checkpoints", "steps[]", step, 0)
        _at_least("checkpoints", "start", self.start, 0, optional=True)
        _at_least("checkpoints", "stop", self.stop, 0, optional=True)
        if self.start is not None and self.stop is not None and self.start > self.stop:
            raise ConfigurationError(
                f"checkpoints.start={self.start} is after checkpoints.stop={self.stop}; use start <= stop."
            )


@dataclass
class RelationsConfig:
    """Which relational facts to prompt with."""

    source: str = "bundled"
    """``bundled`` (shipped with the package), ``lre`` (the paper's upstream files, downloaded and
    checksum-verified on first use) or a path to a local folder in the same layout."""
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    """Relation categories to keep: any of linguistic, commonsense, factual, bias."""
    names: list[str] = field(default_factory=list)
    """Single relations by name (e.g. ``[country_capital_city]``); when set, overrides ``categories``."""
    template: str = "zs:0"
    """Prompt template: ``zs:N`` (Nth zero-shot template; ``zs:0`` is the paper's) or ``std:N``."""
    duplicates: str = "keep"
    """Exact duplicate pairs and subjects repeated with another object (the upstream files have 29):
    ``keep`` (every sample, as the paper does) or ``drop`` (the first sample of each subject). Either way
    each repeat is listed in the run's ``cleaning`` table."""
    max_per_relation: int | None = None
    """Keep at most this many samples per relation (quick runs); None keeps all."""
    multi_token_warn: float = 0.1
    """Warn about a relation when more than this share of its objects are several tokens under the series'
    tokenizer (each is scored on its first token; every relation's count is logged either way)."""

    def __post_init__(self) -> None:
        for cat in self.categories:
            _choice("relations", "categories", cat, CATEGORIES)
        if not self.categories and not self.names:
            raise ConfigurationError(
                "relations selects nothing: set relations.categories or relations.names."
            )
        _choice("relations", "duplicates", self.duplicates, ("keep", "drop"))
        kind, _, index = self.template.partition(":")
        if kind not in ("zs", "std") or not index.isdigit():
            raise ConfigurationError(
                f"relations.template={self.template!r} is not valid; use zs:N or std:N with N = 0, 1, ..."
            )
        _at_least("relations", "max_per_relation", self.max_per_relation, 1, optional=True)
        if not 0.0 <= self.multi_token_warn <= 1.0:
            raise ConfigurationError(
                f"relations.multi_token_warn={self.multi_token_warn} is not valid; use a share in [0, 1]."
            )


@dataclass
class EvaluationConfig:
    """The HIT@k stage."""

    ks: list[int] = field(default_factory=lambda: [1, 10])
    """The k of every HIT@k computed (HIT@10 is the ablation stage's measure)."""
    batch_size: int = 32
    """Prompts per forward pass."""

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ConfigurationError(f"evaluation.ks={self.ks} must be a non-empty list of k >= 1.")
        if self.batch_size < 1:
            raise ConfigurationError(f"evaluation.batch_size={self.batch_size} must be >= 1.")


@dataclass
class AttributionConfig:
    """The Gated-LPI stage."""

    enabled: bool = True
    """Run attribution at every checkpoint (needed by the dynamics and ablation stages)."""
    norm: str = "frozen"
    """``frozen`` (final-norm scale frozen at its value on the last residual; the paper's choice) or
    ``exact`` (the model's own final norm applied to each perturbed residual)."""
    target: str = "gold"
    """``gold`` (first token of the object) or ``predicted`` (the model's own top-1 token)."""
    batch_size: int = 64
    """Prompts per attribution batch."""
    memory_budget_mb: int = 512
    """Bound on the engine's largest working tensor; chunk sizes follow from it."""
    min_memory_budget_mb: int = 16
    """Floor of the out-of-memory retry: on a CUDA out-of-memory error the attribution of a checkpoint is
    retried with ``memory_budget_mb`` halved, down to this value, before the run fails."""
    top_n_logged: int = 20
    """Top neurons and heads per checkpoint written to the MLflow tables."""
    cache_dir: str | None = None
    """Content-addressed cache of per-checkpoint aggregates; None = the user cache directory."""
    use_cache: bool = True
    """Reuse cached aggregates computed by an earlier run with the same inputs."""
    compat: str = "none"
    """``none`` (a causal model with its own final-norm ε) or ``released_code``: every stage of the run (HIT@k,
    attribution, ablation) reproduces the paper's released notebooks, flaws included: attention without the
    causal mask, final-norm ε 1e-6 in φ, attention neurons per source position (docs/released_code.md)."""
    attn_positions: bool | None = None
    """Score attention neurons per (layer, head, dimension, source position), as the released notebooks do;
    the run's attention-neuron table then holds one score per (head, dimension), reduced over the prompt's
    positions by ``attn_position_reduce``. None = true with ``compat=released_code``, else false."""
    attn_position_reduce: str = "absmax"
    """With ``attn_positions``: ``absmax`` (the position of largest |I|, sign kept), ``max`` (largest signed
    score) or ``sum`` (sum over positions)."""

    def __post_init__(self) -> None:
        _choice("attribution", "norm", self.norm, ("frozen", "exact"))
        _choice("attribution", "target", self.target, ("gold", "predicted"))
        _choice("attribution", "compat", self.compat, COMPAT_MODES)
        _choice("attribution", "attn_position_reduce", self.attn_position_reduce, POSITION_REDUCTIONS)
        if self.attn_positions is None and self.compat != MISSING:
            self.attn_positions = self.compat == "released_code"
        if self.batch_size < 1 or self.memory_budget_mb < 1:
            raise ConfigurationError("attribution.batch_size and attribution.memory_budget_mb must be >= 1.")
        _at_least("attribution", "top_n_logged", self.top_n_logged, 1)
        if not 1 <= self.min_memory_budget_mb <= self.memory_budget_mb:
            raise ConfigurationError(
                f"attribution.min_memory_budget_mb={self.min_memory_budget_mb} must be between 1 and "
                f"attribution.memory_budget_mb={self.memory_budget_mb}."
            )

    def scoring_settings(self) -> dict[str, Any]:
        """The scoring choices beyond ``norm`` and ``target`` that change results, for cache and store keys;
        empty at their defaults, so keys written before these options existed stay valid."""
        if self.compat == "none" and not self.attn_positions:
            return {}
        reduce = self.attn_position_reduce if self.attn_positions else None
        return {
            "compat": self.compat,
            "attn_positions": bool(self.attn_positions),
            "attn_position_reduce": reduce,
        }


@dataclass
class DynamicsConfig:
    """The knowledge-dynamics stage (stability, concentration, consolidation)."""

    top_frac: float = 0.01
    """Share of neurons in a top set (J_stab, R_t)."""
    windows: dict[str, list[Any]] = field(default_factory=dict)
    """Named step windows ``name: [start, stop]`` (start inclusive, stop exclusive, null = open) over which
    every metric is also computed, e.g. ``{early: [0, 200], late: [200, null]}``."""
    lagged_pairs: list[list[int]] = field(default_factory=list)
    """Pairs of training steps ``[a, b]`` whose top sets are compared directly (Jaccard overlap, beside the
    consecutive-checkpoint curve), e.g. ``[[100000, 300000]]``; each step is matched to the nearest analysed
    checkpoint."""

    def __post_init__(self) -> None:
        if not 0.0 < self.top_frac <= 1.0:
            raise ConfigurationError(f"dynamics.top_frac={self.top_frac} must be in (0, 1].")
        for name, bounds in self.windows.items():
            check_window(name, bounds)
        for pair in self.lagged_pairs:
            steps = list(pair) if isinstance(pair, list | tuple) else []
            if len(steps) != 2 or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in steps
            ):
                raise ConfigurationError(
                    f"dynamics.lagged_pairs entry {pair!r} is not valid; use two training steps [a, b], both "
                    ">= 0, e.g. [[100000, 300000]]."
                )


@dataclass
class StatisticsConfig:
    """How sure each number is: bootstrap intervals over examples and random-set baselines."""

    resamples: int = 200
    """Bootstrap replicates R (Poisson weights per example, see docs/definitions.md); 0 turns intervals
    off. Attribution keeps ``R x (FFN + ATTN neurons)`` replicate means per checkpoint (float32 when
    stored), so lower it for hub-sized models."""
    level: float = 0.95
    """Coverage of every interval (percentile bootstrap)."""
    seed: int = 0
    """Seed of the bootstrap weights; with it an example's weights depend only on the example, so every
    checkpoint, stage and run resamples the same examples in replicate r."""
    baseline_draws: int = 200
    """Random unit sets drawn per value for the seeded empirical baselines of J_stab and R_t."""

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise ConfigurationError(f"statistics.resamples={self.resamples} must be >= 0 (0: no intervals).")
        if not 0.0 < self.level < 1.0:
            raise ConfigurationError(f"statistics.level={self.level} must be in (0, 1), e.g. 0.95.")
        if self.baseline_draws < 1:
            raise ConfigurationError(f"statistics.baseline_draws={self.baseline_draws} must be >= 1.")


@dataclass
class AblationConfig:
    """The causal-intervention stage."""

    name: str = "none"
    """The intervention's label in run names, tags and tables (a preset's file name, e.g. ``top10_heads``);
    ``none`` with ``unit=none``."""
    label: str = ""
    """Display name in the report and figures, e.g. ``top-10 heads``; empty = ``name``."""
    unit: str = "none"
    """What is zeroed: ``head`` (o_proj input slices), ``ffn_neuron`` (FFN/expert activations) or ``none``
    (no ablation stage)."""
    count: int = 0
    """Number of units, for heads."""
    fraction: float = 0.0
    """Share of the FFN neuron population, for ``ffn_neuron``."""
    rank_by: str = "signed"
    """Rank units by ``signed`` I (the units that raise the answer's log-probability most, as the paper's
    released code orders them) or ``abs`` (|I|, the magnitude the top sets of J_stab use)."""
    random_seeds: int = 3
    """Seeds of the matched random control (same number of random units)."""
    heldout: bool = False
    """Rank units on one half of the examples and evaluate on the other half."""

    @property
    def enabled(self) -> bool:
        """Whether the run has an ablation stage."""
        return self.unit != "none"

    @property
    def display_name(self) -> str:
        """:attr:`label`, else :attr:`name`."""
        return self.label or self.name

    def __post_init__(self) -> None:
        if self.name != MISSING and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", self.name):
            raise ConfigurationError(
                f"ablation.name={self.name!r} must be a label of letters, digits and _ . + - "
                "(it names runs and table rows), e.g. top3_heads."
            )
        _choice("ablation", "unit", self.unit, ABLATION_UNITS)
        _choice("ablation", "rank_by", self.rank_by, ("signed", "abs"))
        if (self.name == "none") != (self.unit == "none"):
            raise ConfigurationError(
                f"ablation.name={self.name} with ablation.unit={self.unit}: an ablation needs "
                "ablation.unit=head or ffn_neuron and a name other than none; no ablation is name=none, unit=none."
            )
        if self.unit == "head" and self.count < 1:
            raise ConfigurationError("ablation.unit=head needs ablation.count >= 1.")
        if self.unit == "ffn_neuron" and not 0.0 < self.fraction < 1.0:
            raise ConfigurationError(
                f"ablation.fraction={self.fraction} is not valid; ablation.unit=ffn_neuron needs 0 < fraction "
                "< 1 (a fraction of 1 would zero every neuron, and the random control the same set)."
            )
        if self.random_seeds < 0:
            raise ConfigurationError("ablation.random_seeds must be >= 0.")


@dataclass
class TrackingConfig:
    """Where results go."""

    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: a database (default, in the working directory), ``file:./mlruns`` or a server
    ``http://127.0.0.1:5000``."""
    artifact_location: str = "mlruns"
    """Artifact root for new experiments (a folder, relative to the working directory, or a URI)."""
    experiment: str = "gated_lpi_exp"
    """MLflow experiment name."""
    run_name: str | None = None
    """Run name; None = ``<model>-<relations>-<ablation>``."""
    on_unreachable: str = "fail"
    """A tracking server that does not answer: ``fail`` before any compute, or ``local`` (log to
    ``sqlite:///mlflow.db`` here instead, and say so)."""
    timeout_s: float = 30.0
    """How long one call may keep retrying a tracking server that stopped answering during a run. After
    that the run goes on and logs to a local spool, replayed into the run when the server answers again
    (see docs/scaling.md)."""
    system_metrics: bool = False
    """Also log the machine's CPU, memory, disk and network use (and GPU use, where ``pynvml`` is
    installed) every 10 s as ``system/*`` metrics, shown in the run's System metrics tab."""

    def __post_init__(self) -> None:
        _choice("tracking", "on_unreachable", self.on_unreachable, ("fail", "local"))
        if not self.uri or not self.experiment:
            raise ConfigurationError("tracking.uri and tracking.experiment must not be empty.")
        _at_least("tracking", "timeout_s", self.timeout_s, 1)


@dataclass
class ExecutionConfig:
    """How a run executes: its result store (resume), and how checkpoints are split over processes."""

    result_dir: str | None = None
    """Root of the result store, where every finished checkpoint's results (hits, attribution sums, top
    units, ablation rows) are kept, keyed by their inputs, with a run-state manifest per run. None = the
    attribution cache root (``attribution.cache_dir``, else the user cache directory). Processes of one
    multi-process run exchange their results through it, so it must be a filesystem they all see."""
    resume: bool = True
    """Reuse a checkpoint's results from the store when an earlier run (a killed one, a failed one, another
    sweep job) finished them with the same inputs. False recomputes every checkpoint (and rewrites its
    entry)."""
    shard: str = "round_robin"
    """How a multi-process run splits its step-sorted checkpoints: ``round_robin`` (process r takes
    checkpoints r, r+P, r+2P, ...; balances early and late checkpoints) or ``contiguous`` (process r takes
    the r-th block of consecutive checkpoints)."""
    timeout_min: int = 1440
    """How long a process of a multi-process run waits for the others (e.g. process 0 for the slowest
    one's checkpoints) before giving up."""
    prefetch: int = 1
    """Hub series: checkpoints downloaded in the background beyond the one being analysed (0: download each
    only when the previous one is finished). Each process of a multi-process run prefetches its own share."""
    keep_checkpoints: str = "none"
    """Hub series: ``none`` evicts each checkpoint this run downloaded from the hub cache once its results are
    in the result store (so the run holds at most ``prefetch + 1`` checkpoints on disk); ``all`` keeps them.
    Files that were in the cache before the run are never deleted."""
    download_retries: int = 5
    """Hub series: further attempts for a file whose download failed (network, server error, content that
    does not match its advertised hash), with exponential backoff from 1 s. A download that still fails skips
    its checkpoint or stops the run, as ``checkpoints.missing`` says."""

    def __post_init__(self) -> None:
        _choice("execution", "shard", self.shard, ("round_robin", "contiguous"))
        _choice("execution", "keep_checkpoints", self.keep_checkpoints, ("none", "all"))
        if self.timeout_min < 1:
            raise ConfigurationError(f"execution.timeout_min={self.timeout_min} must be >= 1.")
        if self.prefetch < 0 or self.download_retries < 0:
            raise ConfigurationError(
                f"execution.prefetch={self.prefetch} and execution.download_retries={self.download_retries} "
                "must be >= 0."
            )


@dataclass
class RunConfig:
    """One run: a model's checkpoint series, a relation set, and the stages to apply."""

    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    relations: RelationsConfig = field(default_factory=RelationsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    seed: int = 0
    """Seed of everything random in the analysis (the random ablation control, held-out splits)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        _at_least("", "seed", self.seed, 0)
        if not self.attribution.enabled and self.ablation.enabled:
            # Units are ranked by their attribution, so without it there is nothing to ablate.
            logging.getLogger(__name__).warning(
                "attribution.enabled=false: skipping ablation=%s (it ranks units by attribution)",
                self.ablation.name,
            )
            self.ablation = AblationConfig()


def check_window(name: str, bounds: Any) -> None:
    """Raise ConfigurationError unless ``bounds`` is ``[start, stop]``: steps >= 0 or null, start < stop."""
    ok = isinstance(bounds, list | tuple) and len(bounds) == 2
    ok = ok and all(b is None or (isinstance(b, int) and not isinstance(b, bool) and b >= 0) for b in bounds)
    if ok and None not in bounds and bounds[0] >= bounds[1]:
        ok = False
    if not ok:
        raise ConfigurationError(
            f"dynamics.windows.{name}={bounds!r} is not valid; use [start, stop] with training steps >= 0 "
            "(start inclusive, stop exclusive, start < stop) or null for an open end, e.g. [0, 200] or "
            "[200, null]."
        )


def check_grid(grid: list[list[Any]]) -> None:
    """Raise ConfigurationError unless ``grid`` is a non-empty list of ``[start, stop|null, every]``."""
    if not grid:
        raise ConfigurationError(
            "checkpoints.select=grid needs checkpoints.grid=[[start, stop, every], ...] (stop may be null)."
        )
    for segment in grid:
        ok = len(segment) == 3 and isinstance(segment[0], int) and isinstance(segment[2], int)
        ok = ok and segment[0] >= 0 and segment[2] > 0
        ok = ok and (segment[1] is None or (isinstance(segment[1], int) and segment[1] >= segment[0]))
        if not ok:
            raise ConfigurationError(
                f"checkpoints.grid segment {list(segment)} must be [start, stop, every] with 0 <= start <= "
                "stop (or stop null: the series' end) and every > 0."
            )


def register_configs() -> None:
    """Register the schemas so ``conf/config.yaml`` is composed onto :class:`RunConfig`."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=schema(RunConfig))


def schema(cls: type) -> DictConfig:
    """The structured config of ``cls`` holding its declared defaults.

    ``OmegaConf.structured`` builds a nested config by calling its default factory, which runs
    ``__post_init__``; a default that ``__post_init__`` derives from another field (``attribution.attn_positions``
    None = "follow ``compat``") would reach the schema already derived from the *default* of that other
    field. The declared default is written back, so it is derived from the composed values instead.
    """
    node = OmegaConf.structured(cls)
    _declared_defaults(node, cls)
    return node


def _declared_defaults(node: DictConfig, cls: type) -> None:
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                _declared_defaults(node[f.name], type(value))
        elif f.default is not dataclasses.MISSING and f.default != MISSING and node[f.name] != f.default:
            node[f.name] = f.default


def to_run_config(cfg: DictConfig | RunConfig) -> RunConfig:
    """Turn a composed config into checked objects.

    Raises:
        ConfigurationError: a value is out of range or not among the valid choices.
    """
    if isinstance(cfg, RunConfig):
        return cfg
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigurationError) else None
        if cause is not None:
            raise cause from None
        raise ConfigurationError(str(exc)) from exc
    if not isinstance(obj, RunConfig):
        raise ConfigurationError("The composed config is not a run config; compose conf/config.yaml.")
    return obj
