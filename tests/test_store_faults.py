"""Damaged stored files: every reader is total (one warning naming the file, the entry recomputed, nothing
good lost), and a run over damaged files finishes with the numbers of a clean run.

The readers are fuzzed directly for many seeds (random bytes at random offsets of every kind of stored
file: result-store and attribution-cache entries and their records, the run state, a series manifest); the
whole pipeline runs for a few seeds, and once through the real CLI for the issue's own scenario."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scale_helpers import assert_same_numbers, make_series, overrides, result_store, run_cli, runs_of

from gated_lpi_exp.checkpoints.loading import resolve_series
from gated_lpi_exp.checkpoints.manifest import DamagedManifestError, read_manifest
from gated_lpi_exp.checkpoints.resolve import list_local_checkpoints
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.run import run
from gated_lpi_exp.storage import arrays, run_state
from gated_lpi_exp.storage.arrays import ArrayStore, read_entry
from gated_lpi_exp.storage.run_state import RunState

STEPS = [0, 10, 20]
READER_SEEDS = 150
COMPARED = ("example_hits", "hit_summary", "top_units", "head_scores", "layer_profiles", "ablation")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _forget_reports() -> None:
    """Each damaged file is reported once per process (until it is written whole again): start afresh."""
    arrays._reported.clear()
    run_state._reported.clear()


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def garble(path: Path, rng: np.random.Generator) -> None:
    """Overwrite 1-16 random bytes at a random offset (sometimes cut the file short instead)."""
    data = bytearray(path.read_bytes())
    if rng.random() < 0.15:
        path.write_bytes(bytes(data[: int(rng.integers(0, max(1, len(data))))]))
        return
    size = int(rng.integers(1, 17))
    at = int(rng.integers(0, max(1, len(data) - size)))
    data[at : at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A finished run over a local series: its config, tables, and every kind of file it stored."""
    root = tmp_path_factory.mktemp("faults")
    series = make_series(root / "series", STEPS)
    cfg = compose_run_config(overrides(series, root / "work", "ablation.random_seeds=1"))
    result = run(cfg)
    cache = root / "work" / "cache"
    return dict(
        root=root,
        series=series,
        cfg=cfg,
        tables=result.tables,
        results=sorted((cache / "results").rglob("*.npz")),
        attribution=sorted((cache / "attribution").rglob("*.npz")),
        state=next((cache / "runs").glob("*.json")),
    )


def _kinds(clean) -> dict[str, Path]:
    return {
        "result entry": clean["results"][0],
        "result record": clean["results"][0].with_suffix(".json"),
        "attribution entry": clean["attribution"][0],
        "attribution record": clean["attribution"][0].with_suffix(".json"),
        "run state": clean["state"],
        "series manifest": clean["series"] / "manifest.json",
    }


def _read(kind: str, path: Path, clean):
    """What the run reads from ``path``, through the reader the run uses."""
    if kind.startswith(("result", "attribution")):
        npz = path.with_suffix(".npz")
        return ArrayStore(npz.parents[2], npz.parents[1].name).get(npz.stem)
    if kind == "run state":
        return RunState(path.parents[1], json.loads(clean["state_text"])["description"]).read()
    try:
        return read_manifest(path.parent)
    except DamagedManifestError:
        return "damaged"


def test_every_reader_takes_random_damage_as_absent_or_intact(clean, tmp_path, caplog):
    clean["state_text"] = clean["state"].read_text()
    for kind, original in _kinds(clean).items():
        pristine = tmp_path / "pristine"
        shutil.copy2(original, pristine)
        expected = _read(kind, original, clean)
        rng = np.random.default_rng(sum(map(ord, kind)))
        try:
            for _ in range(READER_SEEDS):
                shutil.copy2(pristine, original)
                garble(original, rng)
                caplog.clear()
                _forget_reports()
                got = _read(kind, original, clean)  # never raises
                if original.read_bytes() == pristine.read_bytes():
                    continue  # the overwrite wrote the same bytes
                if kind.startswith(("result", "attribution")):
                    if got is not None:  # only the description beside the record was hit: still intact
                        assert kind.endswith("record") and got.keys() == expected.keys(), kind
                        assert all(np.array_equal(got[k], expected[k]) for k in got), kind
                        continue
                    assert f"stored entry {original.with_suffix('.npz')} is damaged" in caplog.text
                elif kind == "run state":
                    assert got["checkpoints"] == {} and str(original) in caplog.text, kind
                else:
                    assert got == ("damaged" if _json(original) != _json(pristine) else expected), kind
                    assert [c.step for c in list_local_checkpoints(original.parent)] == STEPS
        finally:
            shutil.copy2(pristine, original)
    assert read_entry(clean["results"][0], clean["results"][0].stem)  # restored whole


def _same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """The tables of two runs over the same inputs agree. A relation whose attribution is recomputed alone
    runs in smaller batches than in the clean run (other padding lengths), which float kernels may round
    differently: scores agree to float32 rounding (rtol 1e-5), everything discrete exactly."""
    for name in COMPARED:
        pd.testing.assert_frame_equal(
            got[name].reset_index(drop=True), want[name].reset_index(drop=True), rtol=1e-5, obj=name
        )


def _attribution_entries_of(result_entry: Path, clean) -> list[Path]:
    """The attribution-cache entries of the checkpoint whose result entry is ``result_entry``."""
    source = _json(result_entry.with_suffix(".json"))["checkpoint"]["source"]
    return [p for p in clean["attribution"] if _json(p.with_suffix(".json"))["model"] == source]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_over_damaged_files_of_every_kind_finishes_with_the_clean_numbers(clean, seed, caplog):
    rng = np.random.default_rng(seed)
    result_entry = clean["results"][int(rng.integers(len(clean["results"])))]
    related = _attribution_entries_of(result_entry, clean)
    manifest = clean["series"] / "manifest.json"
    damaged = [result_entry, related[int(rng.integers(len(related)))], clean["state"], manifest]
    untouched = {p: p.stat().st_mtime_ns for p in clean["results"] + clean["attribution"] if p not in damaged}
    saved_manifest = manifest.read_bytes()
    for path in damaged:
        garble(path, rng)
    manifest_changed = _json(manifest) != json.loads(saved_manifest)
    _forget_reports()
    try:
        with caplog.at_level("WARNING"):
            again = run(clean["cfg"])
    finally:
        manifest.write_bytes(saved_manifest)  # the series is the user's: the run never rewrites it
    _same_tables(again.tables, clean["tables"])
    for path in damaged[:2]:
        assert f"stored entry {path} is damaged" in caplog.text
        assert read_entry(path, path.stem)  # recomputed and written whole again
    assert not manifest_changed or f"Damaged manifest {manifest}" in caplog.text
    attempts = json.loads(clean["state"].read_text())["attempts"]  # whole again, with this run in it
    assert attempts[-1]["run_id"] == again.run_id and attempts[-1]["status"] == "finished"
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # nothing good was rewritten
    assert "delete" not in caplog.text.lower()


@pytest.mark.slow
def test_a_cli_rerun_over_a_garbled_entry_and_a_truncated_run_state_names_them_and_matches(tmp_path):
    """The issue's done-when: exit 0, every damaged file named, the same numbers as a clean run."""
    series = make_series(tmp_path / "series", STEPS)
    args = overrides(series, tmp_path / "work", "ablation.random_seeds=1")
    assert run_cli(args, cwd=tmp_path).returncode == 0
    cfg = compose_run_config(args)
    store = result_store(cfg)
    entry = store.path(resolve_series(cfg.model, cfg.checkpoints).checkpoints[1])
    data = bytearray(entry.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(range(16))  # 16 bytes mid-file, as in the issue
    entry.write_bytes(bytes(data))
    state = next((tmp_path / "work" / "cache" / "runs").glob("*.json"))
    state.write_text(state.read_text()[: len(state.read_text()) // 2])

    rerun = run_cli(args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "Traceback" not in rerun.stdout
    assert f"stored entry {entry} is damaged" in rerun.stdout
    assert f"run-state file {state} is damaged" in rerun.stdout
    assert "step 10: attribution of" in rerun.stdout  # recomputed (its relations from the cache)
    for step in (0, 20):
        assert f"step {step}: result from the result store" in rerun.stdout
    _, runs = runs_of(cfg.tracking.uri)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert_same_numbers(cfg.tracking.uri, first.info.run_id, cfg.tracking.uri, second.info.run_id,
                        tmp_path / "dl")  # fmt: skip
