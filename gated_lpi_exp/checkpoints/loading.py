"""Find a model's checkpoint series and load its checkpoints (no pickle, no remote code by default)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from gated_lpi_exp.adapters import FAMILIES
from gated_lpi_exp.checkpoints.folder import checkpoint_model_type, load_folder_tokenizer, load_model
from gated_lpi_exp.checkpoints.grid import grid_steps
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
# One weight-loading bar per checkpoint drowns the run's own progress bars; the run shows its own.
hf_logging.disable_progress_bar()


def resolve_series(
    model: ModelConfig, checkpoints: CheckpointsConfig, *, progress: bool = True
) -> Resolution:
    """List the model's checkpoints (building a project suite first if needed) and apply the selection.

    A ``grid`` selection is expanded to its steps (open segments end at ``model.series_end``, else at the
    series' last checkpoint) and matched like an explicit step list; the step each grid point was mapped to
    is logged.
    """
    if model.kind == "suite":
        from gated_lpi_exp.suites import build_suite

        available = list_local_checkpoints(build_suite(model.suite, progress=progress))
    elif model.kind == "local":
        available = list_local_checkpoints(model.source)
    else:
        available = list_hub_checkpoints(model.source, model.branch_pattern, model.tokens_per_step)
    select, steps = checkpoints.select, checkpoints.steps
    if select == "grid":
        end = model.series_end if model.series_end is not None else max(c.step for c in available)
        select, steps = "steps", grid_steps(checkpoints.grid, end)
    resolution = select_checkpoints(
        available,
        select=select,
        steps=steps,
        start=checkpoints.start,
        stop=checkpoints.stop,
        every=checkpoints.every,
        match=checkpoints.match,
        missing=checkpoints.missing,
        limit=checkpoints.limit,
    )
    if checkpoints.select == "grid":
        log.info("checkpoint grid of %s: %s", model.name, describe_mapping(resolution, steps))
    return resolution


def describe_mapping(resolution: Resolution, requested: list[int]) -> str:
    """``10000 -> step10000-tokens41B, ..., 600000 -> step556000-tokens2460B (nearest)``: where each
    requested step went (``missing`` for a step skipped)."""
    by_step = {c.step: c for c in resolution.available}
    parts = []
    for step in requested:
        got = resolution.substitutions.get(step, step)
        if got not in by_step or step in resolution.missing_steps:
            parts.append(f"{step} -> missing")
            continue
        parts.append(f"{step} -> {by_step[got].label}" + ("" if got == step else " (nearest)"))
    return ", ".join(parts)


def pick_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(
            f"model.device={device} but no CUDA device is present; use model.device=auto or cpu."
        )
    return torch.device(device)


def load_checkpoint(
    model: ModelConfig, checkpoint: Checkpoint, *, device: torch.device | None = None
) -> PreTrainedModel:
    """Load one checkpoint in eval mode with :func:`~gated_lpi_exp.checkpoints.folder.load_model`.

    Args:
        model: How to load (dtype, attention, remote code).
        checkpoint: Which checkpoint (a hub revision is downloaded first: config, tokenizer and weights).
        device: Where to put it; None = as ``model.device`` says (a multi-process run passes each process's
            own device).

    Raises:
        CheckpointError: the checkpoint is missing, truncated, or has no readable weights (names the step,
            the path and the fix).
    """
    folder = checkpoint_folder(checkpoint)
    check_family(model, checkpoint, folder)
    try:
        net = load_model(
            folder,
            model.dtype,
            attn_implementation=model.attn_implementation,
            trust_remote_code=model.trust_remote_code,
        )
    except CheckpointError:
        raise  # already names the file and the fix
    except Exception as exc:  # corrupted files surface as many exception types
        where = checkpoint.source + (f"@{checkpoint.revision}" if checkpoint.revision else "")
        if checkpoint.revision is None:
            fix = (
                f"replace the damaged files in {checkpoint.source} (copy or download that checkpoint again; "
                "for a project suite, delete the suite folder and it is rebuilt), then run again: the "
                "checkpoints already analysed are kept in the result store and are not recomputed"
            )
        else:
            fix = f"delete the downloaded files in {folder} so they are downloaded again, then run again"
        raise CheckpointError(
            f"Could not load checkpoint step {checkpoint.step} from {where}: {type(exc).__name__}: {exc}. Fix: {fix}."
        ) from exc
    return net.to(device or pick_device(model.device))  # type: ignore[arg-type]  # transformers wraps .to


def check_family(model: ModelConfig, checkpoint: Checkpoint, folder: Path) -> None:
    """Refuse a checkpoint whose model type is not ``model.family``, before any weight is read (an OLMo v1
    native checkpoint counts as ``olmo``, the class it is converted into).

    Raises:
        CheckpointError: the types differ (names both, the checkpoint and the fix).
    """
    try:
        found = checkpoint_model_type(folder)
    except CheckpointError:  # a missing or damaged config fails the weight loading below, with its own fix
        return
    if found == model.family:
        return
    where = checkpoint.source + (f"@{checkpoint.revision}" if checkpoint.revision else "")
    fix = (
        f"set model.family={found}"
        if found in FAMILIES
        else f"this tool supports {', '.join(FAMILIES)}; see 'Adding a model family' in docs/attribution.md"
    )
    raise CheckpointError(
        f"Checkpoint step {checkpoint.step} at {where} is a {found!r} model (config.json model_type) but "
        f"model.family={model.family!r}. Fix: {fix}."
    )


def checkpoint_folder(checkpoint: Checkpoint, *, weights: bool = True) -> Path:
    """The local folder of a checkpoint: its own folder, or a hub revision's files in the hub cache.

    A hub revision is downloaded with its config and tokenizer files and, when ``weights``, its weights
    (the safetensors files, else ``pytorch_model*.bin``, which only OLMo v1's native layout may use).

    Raises:
        CheckpointError: the hub cannot be reached or the revision does not exist.
    """
    if checkpoint.revision is None:
        return Path(checkpoint.source)
    from huggingface_hub import HfApi, snapshot_download

    patterns = ["*.json", "*.txt", "*.model"]
    try:
        if weights:
            files = HfApi().list_repo_files(checkpoint.source, revision=checkpoint.revision)
            safe = [f for f in files if f.endswith(".safetensors")]
            patterns += ["model*.safetensors"] if safe else ["pytorch_model*.bin"]
        return Path(
            snapshot_download(checkpoint.source, revision=checkpoint.revision, allow_patterns=patterns)
        )
    except Exception as exc:  # offline, unknown revision, auth: all end the same way for the user
        raise CheckpointError(
            f"Could not download {checkpoint.source}@{checkpoint.revision} (step {checkpoint.step}): "
            f"{type(exc).__name__}: {exc}. Fix: check the network and that the revision exists upstream, or "
            "download the series and use model.kind=local model.source=/path/to/series."
        ) from exc


def load_tokenizer(model: ModelConfig, checkpoint: Checkpoint) -> PreTrainedTokenizerBase:
    """The series' tokenizer (with a pad token: the EOS token when the tokenizer has none)."""
    folder = checkpoint_folder(checkpoint, weights=False)
    try:
        return load_folder_tokenizer(folder, trust_remote_code=model.trust_remote_code)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"Could not load the tokenizer of {checkpoint.source} from {folder} ({type(exc).__name__}: {exc})."
        ) from exc
