"""Build (or resume, or reuse) a suite: corpus -> tokenizer -> pre-training with checkpoints -> manifest.

Layout of a suite folder::

    <cache>/<name>-<config_hash>/
        manifest.json        # gated_lpi_exp.checkpoints.manifest; complete=false while building
        facts.json           # every fact with its sampling weight (acquisition vs frequency)
        step0/ step10/ ...   # model.safetensors + config + tokenizer, one per checkpoint
        resume/state.pt      # only while building: optimiser, scheduler, RNG, step

At each checkpoint the step folder is written (temporary name, then rename), then the resume state, then
the manifest. Whatever the moment of an interruption, the resume state names the checkpoints that are whole;
folders it does not name are removed and training continues from its step.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import transformers
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from gated_lpi_exp.checkpoints.checksums import mismatched_files
from gated_lpi_exp.checkpoints.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    read_manifest,
    write_manifest,
)
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.suites.corpus import SentenceBank, fact_statement, filler_sentences, zipf_weights
from gated_lpi_exp.suites.facts import FactSet, load_facts
from gated_lpi_exp.suites.model import init_model, quiet_transformers
from gated_lpi_exp.suites.spec import RECIPE_VERSION, SuiteSpec, suite_dir
from gated_lpi_exp.suites.tokenizer import check_single_token_objects, train_tokenizer
from gated_lpi_exp.suites.training import (
    RESUME_DIR,
    ResumeState,
    has_resume,
    load_resume,
    make_optimizer,
    save_resume,
    train_steps,
)

log = logging.getLogger(__name__)

FILLER_POOL = 3000
"""Distinct filler sentences the corpus draws from."""


def build_suite(spec: SuiteSpec, *, progress: bool = True, stop_after_checkpoint: int | None = None) -> Path:
    """Return the folder of a complete suite, building it or resuming an interrupted build first.

    A suite is the tool's own cache: one whose manifest is damaged or belongs to another recipe, whose
    step folders are missing, or whose files no longer match the sha256 its manifest recorded is reported
    and built again (the build is deterministic, so results stored for it stay valid).

    Args:
        spec: The recipe; preset fields are resolved here.
        progress: Show a tqdm bar (with ETA) while training.
        stop_after_checkpoint: Stop (as if interrupted) once this many checkpoints are saved; for tests.
    """
    spec = spec.resolved()
    root = suite_dir(spec)
    root.parent.mkdir(parents=True, exist_ok=True)
    # A hidden lock beside the suite: concurrent runs wait for one build instead of racing.
    with FileLock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, spec):
            return root
        log.info(
            "%s the one-time build of checkpoint suite %s (%d checkpoints over %d training steps, roughly %s "
            "on 2 CPU cores); it is cached in %s and every later run reuses it.",
            "Resuming" if has_resume(root) else "Starting",
            spec.name,
            len(spec.checkpoint_steps or []),
            spec.steps,
            expected_duration(spec),
            root,
        )
        _build(spec, root, progress, stop_after_checkpoint)
    return root


TOKENS_PER_SECOND = 12_000
"""Training throughput of a tiny suite on 2 CPU cores of the development machine (tiny_moe: 1.6M tokens in
114 s, plus corpus and tokenizer); the build-time estimate's basis."""


def expected_duration(spec: SuiteSpec) -> str:
    """A rough build time for a resolved spec: ``about 3 min``."""
    seconds = 20 + spec.steps * spec.batch_size * spec.seq_len / TOKENS_PER_SECOND
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def _is_complete(root: Path, spec: SuiteSpec) -> bool:
    """Whether ``root`` holds the whole suite; damage found on the way is reported and cleared."""
    if not (root / MANIFEST_NAME).exists():
        return False
    try:
        manifest = read_manifest(root, require_complete=False)
    except CheckpointError as exc:
        return _discard(root, f"{exc}")
    if manifest.config_hash != spec.config_hash():
        return _discard(root, f"{root / MANIFEST_NAME} belongs to another recipe ({manifest.config_hash!r})")
    if not manifest.complete:
        return False
    want = set(spec.checkpoint_steps or [])
    have = {e.step for e in manifest.checkpoints}
    missing = [e.path for e in manifest.checkpoints if not (root / e.path / "model.safetensors").is_file()]
    if missing or want - have:
        return _discard(root, f"it lacks checkpoints {sorted(missing) or sorted(want - have)}")
    changed = [
        f"{e.path}/{name}" for e in manifest.checkpoints for name in mismatched_files(root / e.path, e.files)
    ]
    if changed:
        return _discard(root, f"{', '.join(changed)} differ from the sha256 recorded when it was built")
    # Interrupted between the final manifest and the clean-up: the suite is whole, the state is stale.
    shutil.rmtree(root / RESUME_DIR, ignore_errors=True)
    return True


def _discard(root: Path, reason: str) -> bool:
    """Report why the suite in ``root`` cannot be used and clear it for a fresh build; return False."""
    log.warning("The suite in %s cannot be used: %s. Building it again.", root, reason)
    _clear(root)
    return False


def _build(spec: SuiteSpec, root: Path, progress: bool, stop_after: int | None) -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(spec.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with quiet_transformers():
            _train_suite(spec, root, progress, stop_after)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train_suite(spec: SuiteSpec, root: Path, progress: bool, stop_after: int | None) -> None:
    started = time.perf_counter()
    facts = load_facts(spec.relations)
    resumed = _resume(spec, root, facts) if has_resume(root) and (root / "step0").is_dir() else None
    if resumed is not None:
        bank, tokenizer, model, optimizer, scheduler, state = resumed
        last = (spec.checkpoint_steps or [0])[-1]
        write_manifest(root, _manifest(spec, state.entries, state.step == last, state.build_seconds))
        log.info("Resuming suite %s from step %d", root.name, state.step)
    else:
        _clear(root)
        bank, tokenizer = prepare_corpus(spec, facts)
        model = init_model(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        optimizer, scheduler = make_optimizer(model, spec)
        state = ResumeState(step=0)
        _checkpoint(root, spec, state, model, tokenizer, optimizer, scheduler, None, started)
    _write_facts(root, facts, bank)  # on a resume too: an interruption may have cut it short
    targets = [s for s in spec.checkpoint_steps or [] if s > state.step]
    bar = tqdm(
        total=spec.steps,
        initial=state.step,
        desc=f"pre-training {spec.name}",
        unit="step",
        disable=None if progress else True,  # None: only on a terminal (no bar frames in log files)
    )

    def tick(lm_loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{lm_loss:.3f}", refresh=False)

    try:
        for target in targets:
            if stop_after is not None and len(state.entries) >= stop_after:
                return
            loss = train_steps(model, optimizer, scheduler, bank, spec, state.step, target, on_step=tick)
            state.step = target
            _checkpoint(root, spec, state, model, tokenizer, optimizer, scheduler, loss, started)
    finally:
        bar.close()
    shutil.rmtree(root / RESUME_DIR, ignore_errors=True)


def _resume(spec: SuiteSpec, root: Path, facts: FactSet):
    """Corpus, tokenizer, model, optimiser, scheduler and state of an interrupted build, or None (reported)
    when its saved state cannot be read: the build then starts afresh."""
    try:
        bank, tokenizer = prepare_corpus(spec, facts, AutoTokenizer.from_pretrained(root / "step0"))
        model = init_model(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        optimizer, scheduler = make_optimizer(model, spec)
        state = load_resume(root, model, optimizer, scheduler)
        _drop_unlisted(root, state.entries)
    except Exception as exc:  # noqa: BLE001 - damaged state surfaces as any exception of torch.load and co.
        log.warning("The interrupted build in %s cannot be resumed (%s: %s); building the suite from step 0",
                    root, type(exc).__name__, exc)  # fmt: skip
        return None
    return bank, tokenizer, model, optimizer, scheduler, state


def prepare_corpus(
    spec: SuiteSpec, facts: FactSet, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[SentenceBank, PreTrainedTokenizerFast]:
    """Make the sentence bank (and train the tokenizer unless one is given); check single-token objects."""
    templates = facts.training_templates(spec.holdout_eval_template, spec.drop_eval_extensions)
    rows = list(facts.facts.itertuples(index=False))
    statements = [[fact_statement(t, r.subject, r.object) for t in templates[r.relation]] for r in rows]
    fillers = filler_sentences(FILLER_POOL, np.random.default_rng([spec.seed, 1]))
    objects = [r.object for r in rows]
    if tokenizer is None:
        flat = [s for per_fact in statements for s in per_fact]
        tokenizer = train_tokenizer(flat + fillers, objects, spec.vocab_size)
    pairs = [
        (t.replace("{}", r.subject), r.object) for r in rows for t in [r.template, *templates[r.relation]]
    ]
    check_single_token_objects(tokenizer, [p for p, _ in pairs], [o for _, o in pairs])
    separator = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(separator) != 1:
        raise CheckpointError(f"The suite tokenizer splits a newline into {separator}; it must be one token.")
    weights = zipf_weights(len(rows), spec.zipf_exponent, np.random.default_rng([spec.seed, 2]))
    bank = SentenceBank(
        fact_ids=[_encode(tokenizer, per_fact) for per_fact in statements],
        filler_ids=_encode(tokenizer, fillers),
        fact_weights=weights,
        fact_cdf=np.cumsum(weights),
        separator_id=separator[0],
        fact_share=spec.fact_share,
    )
    return bank, tokenizer


def _encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _checkpoint(
    root: Path,
    spec: SuiteSpec,
    state: ResumeState,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    loss: float | None,
    started: float,
) -> None:
    """Save ``step{N}/``, then the resume state, then the manifest (in that order; see the module doc)."""
    name = f"step{state.step}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(root / name, ignore_errors=True)
    tmp.rename(root / name)
    tokens = state.step * spec.batch_size * spec.seq_len
    state.entries.append(ManifestEntry(step=state.step, tokens=tokens, train_loss=loss, path=name))
    seconds = state.build_seconds + time.perf_counter() - started
    save_resume(root, ResumeState(state.step, state.entries, seconds), model, optimizer, scheduler)
    complete = state.step == (spec.checkpoint_steps or [0])[-1]
    write_manifest(root, _manifest(spec, state.entries, complete, seconds))


def _manifest(spec: SuiteSpec, entries: list[ManifestEntry], complete: bool, seconds: float) -> Manifest:
    recipe = {k: v for k, v in asdict(spec).items() if k not in ("cache_dir", "threads")}
    extra = {
        "spec": recipe,
        "recipe_version": RECIPE_VERSION,
        "tokens_per_step": spec.batch_size * spec.seq_len,
        "build_seconds": round(seconds, 2),
        "threads": spec.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return Manifest(
        name=spec.name,
        family=spec.family,
        config_hash=spec.config_hash(),
        complete=complete,
        checkpoints=list(entries),
        extra=extra,
    )


def _write_facts(root: Path, facts: FactSet, bank: SentenceBank) -> None:
    table = facts.facts[["relation", "category", "subject", "object", "sample_id"]].copy()
    table["weight"] = bank.fact_weights
    tmp = root / ".facts.json.tmp"
    tmp.write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    tmp.replace(root / "facts.json")


def _drop_unlisted(root: Path, entries: list[ManifestEntry]) -> None:
    """Remove step folders the resume state does not list (saved after it, before an interruption)."""
    listed = {e.path for e in entries}
    for folder in root.glob("step*"):
        if folder.is_dir() and folder.name not in listed:
            shutil.rmtree(folder)
    for folder in root.glob(".step*.tmp"):
        shutil.rmtree(folder, ignore_errors=True)
    missing = [e.path for e in entries if not (root / e.path).is_dir()]
    if missing:
        raise CheckpointError(f"Resume state in {root} lists missing folders {missing}.")


def _clear(root: Path) -> None:
    """Start afresh: remove what an earlier, unresumable attempt left (only this module's own files)."""
    root.mkdir(parents=True, exist_ok=True)
    # Manifest and resume state first: an interruption half-way through leaves nothing that looks resumable.
    for pattern in (MANIFEST_NAME, RESUME_DIR, "step*", ".step*.tmp", "facts.json"):
        for path in root.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
