"""The result store: every finished checkpoint's results, keyed by everything that determines them.

An entry holds one checkpoint's per-example HIT@k ranks, its per-relation attribution sums (from which the
aggregate is rebuilt exactly) with the bootstrap replicates of its means, its top units and its ablation rows,
as one ``.npz`` file (tables as parquet bytes, nothing pickled) written atomically under a per-entry lock
(:class:`gated_lpi_exp.storage.arrays.ArrayStore`).
The key is the sha256 of :meth:`ResultStore.describe`: model source, revision and the sha256 of its files,
dtype, the data's hash (relation, category, template, subject, object, prompt, sample id), the token ids
the tokenizer gives the prompts and objects (in run order), the evaluation / attribution / ablation settings,
the seed and the package version. So a run
killed half-way, a run that failed on a damaged checkpoint, and every other run or sweep job with the same
inputs reuse the checkpoints already finished; the processes of a multi-process run hand their results to
process 0 through it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from gated_lpi_exp import __version__
from gated_lpi_exp.attribution.aggregate import UNIT_KINDS, CheckpointAggregate, ScoreSums
from gated_lpi_exp.checkpoints.checksums import folder_checksums
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.schemas import AblationExamples, AblationResult, ExampleHits, TopUnits
from gated_lpi_exp.storage.arrays import ArrayStore, content_key, default_cache_dir, report_damaged

log = logging.getLogger(__name__)

RESULT_FORMAT = 2
"""Bumped when what an entry holds changes meaning."""
_ATTRIBUTION_FIELDS = ("enabled", "norm", "target", "batch_size", "top_n_logged")
"""The attribution settings that change results (memory budget and cache location only change speed)."""
_TABLES = {
    "hits": ExampleHits,
    "top_units": TopUnits,
    "ablation": AblationResult,
    "ablation_examples": AblationExamples,
}


@dataclass
class CheckpointResult:
    """What the per-checkpoint stages computed at one checkpoint."""

    checkpoint: Checkpoint
    hits: pd.DataFrame
    aggregate: CheckpointAggregate | None = None
    top_units: pd.DataFrame | None = None
    ablation: pd.DataFrame | None = None
    ablation_examples: pd.DataFrame | None = None
    """Per example and condition, its 0/1 HIT@10 under the ablation (for intervals)."""
    attribution_seconds: float | None = None
    """Wall-clock seconds of the attribution stage when it was computed."""
    attribution_cached: bool = False
    """Whether every relation's attribution came from the attribution cache when it was computed."""
    reused: bool = False
    """True when this run took the result from the store instead of computing it."""


def result_root(cfg: RunConfig) -> Path:
    """``execution.result_dir``, else the attribution cache root."""
    root = cfg.execution.result_dir or cfg.attribution.cache_dir
    return Path(root).expanduser() if root else default_cache_dir()


def weight_files(checkpoint: Checkpoint) -> list[list[str]] | None:
    """``[name, sha256]`` of a local checkpoint's weight, config and tokenizer files (None for hub
    revisions, which the revision names): a checkpoint whose files changed gets a new key, one rebuilt bit
    for bit keeps its key. Hashes are remembered per file version, so unchanged files are not read again."""
    folder = Path(checkpoint.source)
    if not folder.is_dir():
        return None
    return [[name, digest] for name, digest in folder_checksums(folder).items()]


class ResultStore:
    """Per-checkpoint results of runs with one configuration and data set.

    Args:
        cfg: The run's configuration (model, stage settings, seed, where the store lives).
        data_hash: :func:`gated_lpi_exp.data.dataset_hash` of the run's examples.
        tokens_hash: :func:`gated_lpi_exp.data.batches.token_fingerprint` of the run's examples under the
            series' tokenizer (the token ids the model sees, in run order).
    """

    def __init__(self, cfg: RunConfig, data_hash: str, tokens_hash: str):
        self.root = result_root(cfg)
        self.arrays = ArrayStore(self.root, "results")
        self.settings: dict[str, Any] = {
            "format": RESULT_FORMAT,
            "package": __version__,
            "model": {
                "family": cfg.model.family,
                "dtype": cfg.model.dtype,
                "attn_implementation": cfg.model.attn_implementation,
                "trust_remote_code": cfg.model.trust_remote_code,
            },
            "data": data_hash,
            "tokens": tokens_hash,
            "evaluation": asdict(cfg.evaluation),
            "attribution": {k: getattr(cfg.attribution, k) for k in _ATTRIBUTION_FIELDS}
            | cfg.attribution.scoring_settings(),
            # The label only names the ablation on screen: renaming it keeps the stored results.
            "ablation": {k: v for k, v in asdict(cfg.ablation).items() if k != "label"},
            "statistics": asdict(cfg.statistics),
            "seed": cfg.seed,
        }
        """What every checkpoint of the run shares in its key."""

    def describe(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Everything that determines one checkpoint's results."""
        where = dict(
            source=checkpoint.source,
            revision=checkpoint.revision,
            step=checkpoint.step,
            files=weight_files(checkpoint),
        )
        if checkpoint.commit:  # a hub branch that moved is another checkpoint (local keys stay as they were)
            where["commit"] = checkpoint.commit
        return {**self.settings, "checkpoint": where}

    def key(self, checkpoint: Checkpoint) -> str:
        return content_key(self.describe(checkpoint))

    def path(self, checkpoint: Checkpoint) -> Path:
        return self.arrays.path(self.key(checkpoint))

    def has(self, checkpoint: Checkpoint) -> bool:
        """Whether an entry for ``checkpoint`` exists (without reading it; :meth:`get` checks it)."""
        return self.path(checkpoint).is_file()

    def lock(self, checkpoint: Checkpoint) -> FileLock:
        """Held while a checkpoint is computed, so a second process with the same inputs waits for it."""
        return self.arrays.lock(self.key(checkpoint))

    def attribution_lock(self, checkpoint: Checkpoint) -> FileLock:
        """Held while a checkpoint's attribution is computed: the jobs of a sweep that differ only in what
        comes after attribution (e.g. the ablation) wait for it and take it from the attribution cache."""
        where = self.describe(checkpoint)["checkpoint"]
        settings = self.settings
        inputs = dict(
            checkpoint=where,
            package=settings["package"],
            dtype=settings["model"]["dtype"],
            data=settings["data"],
            tokens=settings["tokens"],
            norm=settings["attribution"]["norm"],
            target=settings["attribution"]["target"],
        )
        return self.arrays.lock("attribution-" + content_key(inputs))

    def describe_run(self, checkpoints: list[Checkpoint], experiment: str) -> dict[str, Any]:
        """What identifies a run in the run-state manifest: settings, checkpoints (not their files, so a
        rerun after a damaged checkpoint was replaced is the same run) and the MLflow experiment."""
        ckpts = [[c.step, c.source, c.revision] + ([c.commit] if c.commit else []) for c in checkpoints]
        return {"settings": self.settings, "checkpoints": ckpts, "experiment": experiment}

    def get(self, checkpoint: Checkpoint) -> CheckpointResult | None:
        """The stored result of ``checkpoint``, or None (absent, or damaged: reported, then recomputed)."""
        arrays = self.arrays.get(self.key(checkpoint))
        if arrays is None:
            return None
        try:
            return _decode(checkpoint, arrays)
        except Exception as exc:  # noqa: BLE001 - an entry from a damaged or foreign file is recomputed
            report_damaged(self.path(checkpoint), exc)
            return None

    def put(self, result: CheckpointResult, sums: dict[str, ScoreSums] | None) -> str:
        """Store ``result`` (with the per-relation sums behind its aggregate) atomically; return its key."""
        key = self.key(result.checkpoint)
        description = {
            **self.describe(result.checkpoint),
            "written": {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()},
        }
        self.arrays.put(key, _encode(result, sums), description)
        return key


def _encode(result: CheckpointResult, sums: dict[str, ScoreSums] | None) -> dict[str, np.ndarray]:
    arrays = {}
    for name in _TABLES:
        table = getattr(result, name)
        if table is not None:
            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            arrays[f"table.{name}"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    sums = sums or {}
    relations = list(sums)
    for i, relation in enumerate(relations):
        arrays[f"counts.{i}"] = sums[relation].counts
        for kind in UNIT_KINDS:
            arrays[f"sums.{i}.{kind}"] = sums[relation].sums[kind]
    replicates = result.aggregate.replicates if result.aggregate is not None else None
    for kind, values in (replicates or {}).items():
        arrays[f"replicates.{kind}"] = values.astype(np.float32)
    meta = {
        "step": result.checkpoint.step,
        "relations": relations,
        "attribution_seconds": result.attribution_seconds,
        "attribution_cached": result.attribution_cached,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def _decode(checkpoint: Checkpoint, arrays: dict[str, np.ndarray]) -> CheckpointResult:
    meta = json.loads(str(arrays["meta"]))
    if meta["step"] != checkpoint.step:
        raise ValueError(f"entry is for step {meta['step']}, not {checkpoint.step}")
    tables = {
        name: schema.check(pd.read_parquet(io.BytesIO(arrays[f"table.{name}"].tobytes())))
        for name, schema in _TABLES.items()
        if f"table.{name}" in arrays
    }
    result = CheckpointResult(
        checkpoint,
        tables["hits"],
        top_units=tables.get("top_units"),
        ablation=tables.get("ablation"),
        ablation_examples=tables.get("ablation_examples"),
        attribution_seconds=meta["attribution_seconds"],
        attribution_cached=meta["attribution_cached"],
        reused=True,
    )
    if meta["relations"]:
        sums = {
            relation: checked_sums({k: arrays[f"sums.{i}.{k}"] for k in UNIT_KINDS}, arrays[f"counts.{i}"])
            for i, relation in enumerate(meta["relations"])
        }
        result.aggregate = CheckpointAggregate.from_sums(checkpoint.step, sums)
        stored = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("replicates.")}
        result.aggregate.replicates = stored or None
    return result


def checked_sums(sums: dict[str, np.ndarray], counts: np.ndarray) -> ScoreSums:
    """Per-relation sums as read from a store, checked: ``counts [2]`` non-negative integers and every
    ``sums[kind]`` a finite float64 array ``[2, layers, units]`` (``[2, layers]`` for the layer kinds).

    Raises:
        ValueError: the arrays do not have that form (a damaged or foreign entry).
    """
    if counts.shape != (2,) or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"counts of shape {counts.shape} and dtype {counts.dtype} are not two counts")
    for kind, values in sums.items():
        ndim = 2 if kind.endswith("_layer") else 3
        if values.ndim != ndim or values.shape[0] != 2 or values.dtype != np.float64:
            raise ValueError(f"sums.{kind} of shape {values.shape} and dtype {values.dtype} is malformed")
        if not np.isfinite(values).all():
            raise ValueError(f"sums.{kind} holds non-finite values")
    return ScoreSums(sums, counts)
