"""Checks of the run's settings against the model and its tokenizer, before any checkpoint is computed.

The config's own checks (:mod:`gated_lpi_exp.config`) cannot know the model: how many heads an ablation may
zero, how large a k HIT@k may use, how the tokenizer splits the objects. These are checked here, after the
series is resolved and its tokenizer loaded, from the first checkpoint's ``config.json`` (no weights load).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import AutoConfig, PreTrainedTokenizerBase

from gated_lpi_exp.checkpoints.folder import read_config
from gated_lpi_exp.checkpoints.olmo_native import is_native_olmo, native_olmo_config
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import RunConfig
from gated_lpi_exp.data.objects import multi_token_objects, note_multi_token_objects
from gated_lpi_exp.errors import ConfigurationError

log = logging.getLogger(__name__)


def check_before_compute(
    cfg: RunConfig,
    checkpoint: Checkpoint,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    folder: str | None = None,
) -> dict[str, Any]:
    """Check the settings against the model and the objects against the tokenizer; return params to log.
    ``folder``: a local folder holding the checkpoint's ``config.json`` (a hub checkpoint's downloaded small
    files); None: ``checkpoint.source``.

    An ``ablation.count`` that would zero every head (the targeted and random sets would be the same, so the
    drop would say nothing) is clamped to all heads but one, with a warning; ``ablation.count_requested`` in
    the returned params and the ablation table's ``n_units`` say so.

    Raises:
        ConfigurationError: a k of ``evaluation.ks`` exceeds the vocabulary.
    """
    counts = multi_token_objects(tokenizer, samples)
    params: dict[str, Any] = note_multi_token_objects(samples, counts, cfg.relations.multi_token_warn)
    model = _model_config(cfg, checkpoint, folder)
    if model is None:
        return params
    vocab = int(getattr(model, "vocab_size", 0) or len(tokenizer))
    if max(cfg.evaluation.ks) > vocab:
        raise ConfigurationError(
            f"evaluation.ks={cfg.evaluation.ks} asks for HIT@{max(cfg.evaluation.ks)} but {cfg.model.name} has "
            f"{vocab} tokens; use k between 1 and {vocab}."
        )
    heads = int(model.num_hidden_layers) * int(model.num_attention_heads)
    params["model.n_heads_total"] = heads
    if cfg.attribution.enabled and cfg.ablation.unit == "head" and cfg.ablation.count >= heads:
        _clamp_head_count(cfg, heads, params)
    return params


def _clamp_head_count(cfg: RunConfig, heads: int, params: dict[str, Any]) -> None:
    """Lower ``cfg.ablation.count`` to ``heads - 1`` (before the run's params are logged and its results
    keyed), recording the requested count in ``params``."""
    requested = cfg.ablation.count
    cfg.ablation.count = heads - 1
    params["ablation.count_requested"] = requested
    log.warning(
        "ablation.count=%d would zero every one of the %d heads of %s, so targeted and random sets would be "
        "the same; clamped to %d heads (one left unmasked), marked in the ablation table's n_units and the "
        "param ablation.count_requested. For a drop that means something: ablation=top1_head, or "
        "ablation.count=N with N well below %d.",
        requested, heads, cfg.model.name, heads - 1, heads,
    )  # fmt: skip


def _model_config(cfg: RunConfig, checkpoint: Checkpoint, folder: str | None):
    """The checkpoint's ``transformers`` config (only ``config.json`` is read; OLMo v1's native layout as the
    ``OlmoConfig`` it loads as), or None when it has none."""
    local = folder or (checkpoint.source if Path(checkpoint.source).is_dir() else None)
    try:
        if local is not None:  # no network: a local series, or a hub checkpoint's downloaded small files
            raw = read_config(local)
            if is_native_olmo(raw):
                return native_olmo_config(raw, Path(local) / "config.json")
            return AutoConfig.from_pretrained(
                local, local_files_only=True, trust_remote_code=cfg.model.trust_remote_code
            )
        return AutoConfig.from_pretrained(
            checkpoint.source,
            revision=checkpoint.commit or checkpoint.revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    except Exception as exc:  # noqa: BLE001 - a layout without config.json: the stages check as they go
        log.info("no model config to check the settings against before compute (%s)", exc)
        return None
