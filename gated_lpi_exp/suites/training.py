"""The optimisation loop of a suite and the state that lets an interrupted build resume bit-exactly.

The data order is a function of the step (see :mod:`gated_lpi_exp.suites.corpus`), so the resume state is
the model, the optimiser, the scheduler, torch's RNG and the step reached: nothing else.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel

from gated_lpi_exp.checkpoints.manifest import ManifestEntry
from gated_lpi_exp.suites.corpus import SentenceBank, sample_batch
from gated_lpi_exp.suites.spec import SuiteSpec

RESUME_DIR = "resume"
STATE_FILE = "state.pt"
GRAD_CLIP = 1.0
FINAL_LR_FRACTION = 0.1


def make_optimizer(
    model: PreTrainedModel, spec: SuiteSpec
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay on matrices only) with linear warm-up then cosine decay to 10% of ``lr``."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)

    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, progress))
        )

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_steps(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    bank: SentenceBank,
    spec: SuiteSpec,
    start: int,
    stop: int,
    on_step=None,
) -> float:
    """Run steps ``start .. stop - 1``; return their mean language-model loss (router loss excluded).

    Args:
        on_step: Called with the step's LM loss after each step (progress reporting).
    """
    total = 0.0
    for step in range(start, stop):
        batch = sample_batch(bank, spec.seed, step, spec.batch_size, spec.seq_len)  # [batch, seq]
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        aux = getattr(out, "aux_loss", None)
        lm_loss = out.loss.item() - (spec.router_aux_loss_coef * aux.item() if aux is not None else 0.0)
        total += lm_loss
        if on_step is not None:
            on_step(lm_loss)
    return total / max(1, stop - start)


@dataclass
class ResumeState:
    """Everything needed to continue a build from its last checkpoint."""

    step: int
    """The step of the last saved checkpoint (training continues from here)."""
    entries: list[ManifestEntry] = field(default_factory=list)
    """Manifest entries of the checkpoints saved so far."""
    build_seconds: float = 0.0
    """Wall-clock seconds spent building so far (summed over interrupted runs)."""


def save_resume(
    root: Path,
    state: ResumeState,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> None:
    """Write ``resume/state.pt`` atomically (temporary file, then rename)."""
    folder = root / RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "entries": [asdict(e) for e in state.entries],
        "build_seconds": state.build_seconds,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / STATE_FILE)


def load_resume(
    root: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> ResumeState:
    """Restore model, optimiser, scheduler and RNG from ``resume/state.pt``; return where to continue."""
    payload = torch.load(root / RESUME_DIR / STATE_FILE, weights_only=True)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    entries = [ManifestEntry(**e) for e in payload["entries"]]
    return ResumeState(step=payload["step"], entries=entries, build_seconds=payload["build_seconds"])


def has_resume(root: Path) -> bool:
    """Whether ``root`` holds resume state."""
    return (root / RESUME_DIR / STATE_FILE).is_file()
