"""Find a model's checkpoint series and load its checkpoints (safetensors only, no remote code by default)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.checkpoints.resolve import (
    Checkpoint,
    Resolution,
    list_hub_checkpoints,
    list_local_checkpoints,
    select_checkpoints,
)
from gated_lpi_exp.config import CheckpointsConfig, ModelConfig
from gated_lpi_exp.errors import CheckpointError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_series(
    model: ModelConfig, checkpoints: CheckpointsConfig, *, progress: bool = True
) -> Resolution:
    """List the model's checkpoints (building a project suite first if needed) and apply the selection."""
    if model.kind == "suite":
        from gated_lpi_exp.suites import build_suite

        available = list_local_checkpoints(build_suite(model.suite, progress=progress))
    elif model.kind == "local":
        available = list_local_checkpoints(model.source)
    else:
        available = list_hub_checkpoints(model.source)
    return select_checkpoints(
        available,
        select=checkpoints.select,
        steps=checkpoints.steps,
        start=checkpoints.start,
        stop=checkpoints.stop,
        every=checkpoints.every,
        match=checkpoints.match,
        missing=checkpoints.missing,
        limit=checkpoints.limit,
    )


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(
            f"model.device={device} but no CUDA device is present; use model.device=auto or cpu."
        )
    return torch.device(device)


def load_checkpoint(model: ModelConfig, checkpoint: Checkpoint) -> PreTrainedModel:
    """Load one checkpoint in eval mode on the configured device.

    Raises:
        CheckpointError: the checkpoint is missing, truncated or not in safetensors format.
    """
    kwargs = dict(
        revision=checkpoint.revision,
        dtype=_DTYPES.get(model.dtype, "auto"),
        use_safetensors=True,
        trust_remote_code=model.trust_remote_code,
        attn_implementation=model.attn_implementation,
    )
    try:
        net = AutoModelForCausalLM.from_pretrained(checkpoint.source, **kwargs)
    except Exception as exc:  # corrupted files surface as many exception types
        where = checkpoint.source + (f"@{checkpoint.revision}" if checkpoint.revision else "")
        fix = (
            f"delete {checkpoint.source} (a project suite is rebuilt on the next run)"
            if Path(checkpoint.source).exists()
            else "check the revision exists and the network is up"
        )
        raise CheckpointError(
            f"Could not load checkpoint step {checkpoint.step} from {where}: {type(exc).__name__}: {exc}. Fix: {fix}."
        ) from exc
    return net.to(pick_device(model.device)).eval()


def load_tokenizer(model: ModelConfig, checkpoint: Checkpoint) -> PreTrainedTokenizerBase:
    """The series' tokenizer (with a pad token: the EOS token when the tokenizer has none)."""
    try:
        tok = AutoTokenizer.from_pretrained(
            checkpoint.source, revision=checkpoint.revision, trust_remote_code=model.trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(
            f"Could not load the tokenizer of {checkpoint.source} ({type(exc).__name__}: {exc})."
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
