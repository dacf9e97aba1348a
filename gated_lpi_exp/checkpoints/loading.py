"""Find a model's checkpoint series and load its checkpoints (no pickle, no remote code by default).

A local folder (a local series, a suite, or a hub revision the walk downloaded) loads through
:func:`~gated_lpi_exp.checkpoints.folder.load_model`, which reads the transformers layout and OLMo v1's native
layout alike and refuses pickle-only weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from gated_lpi_exp.adapters import FAMILIES
from gated_lpi_exp.checkpoints.checksums import mismatched_files
from gated_lpi_exp.checkpoints.folder import checkpoint_model_type, load_folder_tokenizer, load_model
from gated_lpi_exp.checkpoints.grid import grid_steps
from gated_lpi_exp.checkpoints.hub import list_hub_checkpoints
from gated_lpi_exp.checkpoints.resolve import (
    Checkpoint,
    Resolution,
    list_local_checkpoints,
    select_checkpoints,
)
from gated_lpi_exp.config import CheckpointsConfig, ModelConfig
from gated_lpi_exp.errors import CheckpointError

log = logging.getLogger(__name__)
# One weight-loading bar per checkpoint drowns the run's own progress bars; the run shows its own.
hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        revisions=checkpoints.revisions,
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
    model: ModelConfig,
    checkpoint: Checkpoint,
    *,
    device: torch.device | None = None,
    path: str | None = None,
) -> PreTrainedModel:
    """Load one checkpoint in eval mode, safetensors weights only.

    Args:
        model: How to load (dtype, attention, remote code).
        checkpoint: Which checkpoint.
        device: Where to put it; None = as ``model.device`` says (a multi-process run passes each process's
            own device).
        path: A local folder holding the checkpoint's files (a downloaded hub revision's snapshot); None =
            ``checkpoint.source`` at its commit (or branch).

    Raises:
        CheckpointError: the checkpoint is missing, truncated, has only pickle weights, or is a damaged
            OLMo v1 native folder (names the step or file, the path and the fix).
    """
    source, revision = _where(checkpoint, path)
    check_family(model, checkpoint, path)
    if model.verify_checksums:
        verify_checksums(checkpoint)
    try:
        if revision is None:  # a local folder: the transformers layout or OLMo v1's native one
            net = load_model(
                source,
                model.dtype,
                attn_implementation=model.attn_implementation,
                trust_remote_code=model.trust_remote_code,
            )
        else:
            net = AutoModelForCausalLM.from_pretrained(
                source,
                revision=revision,
                dtype=_DTYPES.get(model.dtype, "auto"),
                use_safetensors=True,  # never unpickle weights
                trust_remote_code=model.trust_remote_code,
                attn_implementation=model.attn_implementation,
            )
    except CheckpointError:
        raise  # already names the file and the fix (pickle-only weights, a bad native folder)
    except Exception as exc:  # corrupted files surface as many exception types
        where = checkpoint.source + (f"@{checkpoint.revision}" if checkpoint.revision else "")
        where += f" ({source})" if path else ""
        if path:
            fix = (
                f"delete the downloaded revision {source} (it is downloaded again), then run again: the "
                "checkpoints already analysed are kept in the result store and are not recomputed"
            )
        elif Path(checkpoint.source).exists():
            fix = (
                f"replace the damaged files in {checkpoint.source} (copy or download that checkpoint again; "
                "a project suite is checked and rebuilt by the next run), then run again: the checkpoints "
                "already analysed are kept in the result store and are not recomputed"
            )
        else:
            fix = "check the revision exists upstream, has safetensors weights, and the network is up"
        raise CheckpointError(
            f"Could not load checkpoint step {checkpoint.step} from {where}: {type(exc).__name__}: {exc}. Fix: {fix}."
        ) from exc
    return net.to(device or pick_device(model.device)).eval()  # type: ignore[arg-type]  # transformers wraps .to


def check_family(model: ModelConfig, checkpoint: Checkpoint, path: str | None = None) -> None:
    """Refuse a checkpoint whose ``model_type`` is not ``model.family``, before any weight is read
    (``path`` as for :func:`load_checkpoint`).

    Raises:
        CheckpointError: the types differ (names both, the checkpoint and the fix).
    """
    source, revision = _where(checkpoint, path)
    try:
        if revision is None:  # a local folder; OLMo v1's native layout counts as olmo, the class it becomes
            found = checkpoint_model_type(source)
        else:
            config = AutoConfig.from_pretrained(
                source, revision=revision, trust_remote_code=model.trust_remote_code
            )
            found = getattr(config, "model_type", None)
    except Exception:  # a missing or damaged config fails the weight loading below, with its own fix
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


def verify_checksums(checkpoint: Checkpoint) -> None:
    """Check a local checkpoint's files against the sha256 its series manifest recorded.

    Raises:
        CheckpointError: a recorded file is missing or its content changed (names the files and the fix).
    """
    if not checkpoint.files:
        return
    bad = mismatched_files(checkpoint.source, dict(checkpoint.files))
    if bad:
        raise CheckpointError(
            f"Could not load checkpoint step {checkpoint.step} from {checkpoint.source}: {', '.join(bad)} "
            "differ from the sha256 recorded in the series manifest (damaged or changed since the series was "
            "written). Fix: replace the damaged files (copy or download that checkpoint again), or set "
            "model.verify_checksums=false to load them as they are; the checkpoints already analysed are "
            "kept in the result store and are not recomputed."
        )


def _where(checkpoint: Checkpoint, path: str | None) -> tuple[str, str | None]:
    """What to hand ``from_pretrained``: a local folder, or the repository at its pinned commit."""
    if path is not None:
        return path, None
    return checkpoint.source, checkpoint.commit or checkpoint.revision


def load_tokenizer(
    model: ModelConfig, checkpoint: Checkpoint, path: str | None = None
) -> PreTrainedTokenizerBase:
    """The series' tokenizer (with a pad token: the EOS token when the tokenizer has none); ``path`` as for
    :func:`load_checkpoint` (read from there only: no request to the hub)."""
    source, revision = _where(checkpoint, path)
    try:
        if revision is None:  # a local folder (OLMo v1 native: its tokenizer.json, no remote class)
            return load_folder_tokenizer(source, trust_remote_code=model.trust_remote_code)
        tok = AutoTokenizer.from_pretrained(
            source,
            revision=revision,
            trust_remote_code=model.trust_remote_code,
        )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"Could not load the tokenizer of {checkpoint.source} ({type(exc).__name__}: {exc})."
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
