"""Checkpoint series: hub branch parsing, selection, local manifests and their failures."""

from __future__ import annotations

import logging

import pytest

from gated_lpi_exp.checkpoints.grid import grid_steps
from gated_lpi_exp.checkpoints.loading import load_checkpoint, resolve_series
from gated_lpi_exp.checkpoints.manifest import Manifest, ManifestEntry, read_manifest, write_manifest
from gated_lpi_exp.checkpoints.resolve import (
    Checkpoint,
    list_local_checkpoints,
    parse_branches,
    select_checkpoints,
)
from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.config import CheckpointsConfig, ModelConfig
from gated_lpi_exp.errors import CheckpointError, ConfigurationError
from gated_lpi_exp.testing import random_model

BRANCHES = [
    "main",
    "step5000-tokens20B",
    "step10000-tokens41B",
    "step15000-tokens62B",
    "step1200000-tokens5033B",
    "step20000-tokens83B",
    "some-feature-branch",
]


def _series():
    return parse_branches("allenai/OLMoE-1B-7B-0924", BRANCHES)


def test_branches_are_parsed_never_synthesised():
    series = _series()
    assert [c.step for c in series] == [5000, 10000, 15000, 20000, 1200000]
    assert [c.revision for c in series][:2] == ["step5000-tokens20B", "step10000-tokens41B"]
    assert series[1].tokens == 41 * 10**9
    assert all(c.revision in BRANCHES for c in series)


def test_select_all_range_and_every():
    series = _series()
    assert [c.step for c in select_checkpoints(series).checkpoints] == [5000, 10000, 15000, 20000, 1200000]
    picked = select_checkpoints(series, select="range", start=10000, stop=20000, every=10000)
    assert [c.step for c in picked.checkpoints] == [10000, 20000]
    assert [c.step for c in select_checkpoints(series, limit=2).checkpoints] == [5000, 1200000]


def test_explicit_steps_missing_are_reported_or_fail(caplog):
    series = _series()
    with caplog.at_level(logging.WARNING):
        res = select_checkpoints(series, select="steps", steps=[5000, 7000], missing="warn")
    assert [c.step for c in res.checkpoints] == [5000] and res.missing_steps == [7000]
    assert "7000" in caplog.text
    with pytest.raises(CheckpointError, match="7000"):
        select_checkpoints(series, select="steps", steps=[5000, 7000], missing="fail")


def test_nearest_maps_to_real_branches():
    res = select_checkpoints(_series(), select="steps", steps=[6000, 900000], match="nearest")
    assert [c.revision for c in res.checkpoints] == ["step5000-tokens20B", "step1200000-tokens5033B"]
    assert res.substitutions == {6000: 5000, 900000: 1200000}


def test_a_selection_matching_nothing_lists_what_exists():
    with pytest.raises(CheckpointError) as err:
        select_checkpoints(_series(), select="range", start=30000, stop=40000)
    assert "5000" in str(err.value) and "1200000" in str(err.value)


def _write_series(root, steps, complete=True):
    entries = []
    for s in steps:
        (root / f"step{s}").mkdir(parents=True)
        entries.append(ManifestEntry(step=s, tokens=s * 10, path=f"step{s}"))
    write_manifest(root, Manifest(name="t", family="olmoe", complete=complete, checkpoints=entries))


def test_local_manifest_round_trip(tmp_path):
    _write_series(tmp_path, [0, 10, 5])
    series = list_local_checkpoints(tmp_path)
    assert [c.step for c in series] == [0, 5, 10]
    assert series[1].source == str(tmp_path / "step5") and series[1].tokens == 50


def test_an_incomplete_or_damaged_manifest_and_a_missing_folder_are_handled_clearly(tmp_path, caplog):
    _write_series(tmp_path / "a", [0, 10], complete=False)
    with pytest.raises(CheckpointError, match="incomplete"):
        list_local_checkpoints(tmp_path / "a")
    with pytest.raises(CheckpointError, match="does not exist"):
        list_local_checkpoints(tmp_path / "nowhere")
    _write_series(tmp_path / "c", [0])
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="Damaged manifest"):
        read_manifest(tmp_path / "c")
    with caplog.at_level("WARNING"):
        assert [c.step for c in list_local_checkpoints(tmp_path / "c")] == [0]  # from the step folders
    assert f"Damaged manifest {tmp_path / 'c' / 'manifest.json'}" in caplog.text
    assert "delete" not in caplog.text.lower()


def test_a_missing_step_folder_is_skipped_with_a_warning_unless_that_step_is_required(tmp_path, caplog):
    _write_series(tmp_path / "b", [0, 10, 20])
    (tmp_path / "b" / "step10").rmdir()
    with caplog.at_level("WARNING"):
        series = list_local_checkpoints(tmp_path / "b")
    assert [c.step for c in series] == [0, 20]
    assert "lists steps 10 (step10) whose folders are missing; skipping them" in caplog.text
    assert "delete" not in caplog.text.lower()
    assert [c.step for c in select_checkpoints(series, select="steps", steps=[0, 20]).checkpoints] == [0, 20]
    with pytest.raises(CheckpointError, match="Steps not in the series: \\[10\\]"):
        select_checkpoints(series, select="steps", steps=[10, 20], missing="fail")


def test_a_manifest_changed_on_disk_is_damaged_not_read_as_other_steps(tmp_path):
    _write_series(tmp_path, [0, 10])
    path = tmp_path / "manifest.json"
    path.write_text(path.read_text().replace('"step": 10', '"step": 19'))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        read_manifest(tmp_path)


def test_folders_without_manifest_are_scanned(tmp_path, caplog):
    for s in (100, 20):
        (tmp_path / f"step{s}").mkdir()
    (tmp_path / "notes").mkdir()
    with caplog.at_level(logging.WARNING):
        assert [c.step for c in list_local_checkpoints(tmp_path)] == [20, 100]
    assert "manifest" in caplog.text


@pytest.mark.parametrize(
    ("series", "names", "steps", "tokens"),
    [
        (
            "pythia",
            ["main", "step0", "step1", "step512", "step1000", "step143000"],
            [0, 1, 512, 1000, 143000],
            2097152 * 143000,
        ),
        (
            "olmo2_1b",
            [
                "main",
                "stage1-step0-tokens0B",
                "stage1-step1000-tokens3B",
                "stage2-ingredient1-step1000-tokens3B",
            ],
            [0, 1000],
            3 * 10**9,
        ),
        ("amber", ["main", "ckpt_000", "ckpt_001", "ckpt_359", "ckpt_final"], [0, 1, 359], None),
    ],
)
def test_each_series_reads_its_own_branch_names(series, names, steps, tokens):
    model = compose_run_config([f"model={series}"]).model
    found = parse_branches(model.source, names, model.branch_pattern, model.tokens_per_step)
    assert [c.step for c in found] == steps
    assert all(c.revision in names and c.source == model.source for c in found)
    assert found[-1].tokens == tokens


def test_a_checkpoint_of_another_family_is_refused_before_its_weights_load(tmp_path):
    random_model("gpt_neox").save_pretrained(tmp_path / "step0")
    model = compose_run_config(["model=micro_dense", "model.kind=local", f"model.source={tmp_path}"]).model
    with pytest.raises(
        CheckpointError, match="is a 'gpt_neox' model .* model.family='olmo'. Fix: set model.family=gpt_neox"
    ):
        load_checkpoint(model, Checkpoint(step=0, source=str(tmp_path / "step0")))


def test_the_papers_grid_expands_to_its_steps():
    grid = [[10_000, 70_000, 10_000], [100_000, None, 100_000]]
    olmo = grid_steps(grid, 600_000)
    assert olmo == [10_000 * i for i in range(1, 8)] + [100_000 * i for i in range(1, 7)]
    assert len(grid_steps(grid, 1_200_000)) == 19 and grid_steps(grid, 1_200_000)[-1] == 1_200_000
    assert grid_steps([[0, 10, 5], [5, 20, 5]], 0) == [0, 5, 10, 15, 20]  # overlaps counted once
    with pytest.raises(ConfigurationError, match="ends at step 800, before its start 100000"):
        grid_steps(grid, 800)


def test_a_grid_is_mapped_to_the_nearest_real_checkpoints_and_the_mapping_logged(tmp_path, caplog):
    # OLMo-7B's branches stop at step 556000: the grid's 600K maps there.
    _write_series(tmp_path, [1000, 10_000, 19_000, 30_000, 556_000])
    model = ModelConfig(name="olmo", family="olmo", kind="local", source=str(tmp_path), series_end=600_000)
    checkpoints = CheckpointsConfig(
        select="grid", grid=[[10_000, 30_000, 10_000], [100_000, None, 500_000]], match="nearest"
    )
    with caplog.at_level(logging.INFO, logger="gated_lpi_exp"):
        res = resolve_series(model, checkpoints)
    assert [c.step for c in res.checkpoints] == [10_000, 19_000, 30_000, 556_000]
    assert res.substitutions == {20_000: 19_000, 100_000: 30_000, 600_000: 556_000}
    assert "20000 -> step19000 (nearest)" in caplog.text and "600000 -> step556000 (nearest)" in caplog.text
    no_end = ModelConfig(name="olmo", family="olmo", kind="local", source=str(tmp_path))
    open_end = CheckpointsConfig(select="grid", grid=[[1000, None, 555_000]])  # 1000, then the series' last
    assert [c.step for c in resolve_series(no_end, open_end).checkpoints] == [1000, 556_000]


def test_a_malformed_grid_is_refused_when_the_config_is_built():
    for grid in ([], [[10, 5, 1]], [[0, None, 0]], [[0, 10]]):
        with pytest.raises(ConfigurationError, match="checkpoints.grid"):
            CheckpointsConfig(select="grid", grid=grid)


def test_revisions_select_by_branch_name_or_the_commit_a_branch_points_at(caplog):
    commits = {name: f"{i:x}" * 40 for i, name in enumerate(BRANCHES, start=1)}
    series = parse_branches("allenai/OLMoE-1B-7B-0924", {n: c[:40] for n, c in commits.items()})
    assert series[0].commit == commits["step5000-tokens20B"][:40]
    by_commit = commits["step15000-tokens62B"][:12]  # a unique prefix, as `git log --oneline` prints it
    picked = select_checkpoints(series, select="revisions", revisions=["step10000-tokens41B", by_commit])
    assert [c.step for c in picked.checkpoints] == [10000, 15000]
    with caplog.at_level(logging.WARNING):
        picked = select_checkpoints(series, select="revisions", revisions=["step5000-tokens20B", "abcdef0"])
    assert [c.step for c in picked.checkpoints] == [5000] and "abcdef0" in caplog.text
    with pytest.raises(CheckpointError, match="abcdef0"):
        select_checkpoints(series, select="revisions", revisions=["abcdef0"], missing="fail")
