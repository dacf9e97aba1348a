"""The report end to end: runs logged to a real MLflow sqlite store the way the run module logs them."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gated_lpi_exp.attribution.aggregate import CheckpointAggregate
from gated_lpi_exp.config import DynamicsConfig, TrackingConfig
from gated_lpi_exp.report import main
from gated_lpi_exp.report.render import md_escape
from gated_lpi_exp.report.runs import Column, RunData, make_columns
from gated_lpi_exp.report.sections import split_sections
from gated_lpi_exp.report.select import select_runs
from gated_lpi_exp.report.tables import Cell, Row, ablation_labels, mark_best, table4
from gated_lpi_exp.schemas import AblationResult, HitSummary
from gated_lpi_exp.stages.dynamics import compute_dynamics, layer_profiles
from gated_lpi_exp.stages.lagged import lagged_overlaps
from gated_lpi_exp.tracking.sweep import sweep_parent
from gated_lpi_exp.tracking.tracker import Tracker

STEPS = [0, 10, 20, 30]
WINDOWS = {"early": [0, 20], "late": [20, None]}


def _aggregates(seed: int, n_layers: int) -> list[CheckpointAggregate]:
    rng = np.random.default_rng(seed)
    return [
        CheckpointAggregate(
            step=s, ffn=rng.normal(size=(n_layers, 40)), attn=rng.normal(size=(n_layers, 8)),
            heads=rng.normal(size=(n_layers, 2)), ffn_layer=rng.uniform(0.1, 1, n_layers),
            attn_layer=rng.uniform(0.1, 1, n_layers), n_examples=4,
        )
        for s in STEPS
    ]  # fmt: skip


def _hits() -> pd.DataFrame:
    rows = [
        dict(step=s, scope=scope, group=group, k=k, hit=0.1 * i, n=4)
        for i, s in enumerate(STEPS) for k in (1, 10)
        for scope, group in (("overall", "all"), ("category", "factual"), ("relation", "country_language"))
    ]  # fmt: skip
    return HitSummary.check(pd.DataFrame(rows))


def _ablation() -> pd.DataFrame:
    """Steps 10 and 20 know the facts (base 0.5): targeted drops 40 and 60, random seeds 10 and 20. Step 30 is
    near chance (base 0.1): targeted 100, random 40 and 50. All checkpoints: targeted 66.67, random 25.00 ±
    7.07; checkpoints with base >= 0.5: 50.00 and 15.00 ± 7.07."""
    rows = []
    for step, base, targeted, randoms in ((10, 0.5, 40.0, (10.0, 20.0)), (20, 0.5, 60.0, (10.0, 20.0)),
                                          (30, 0.1, 100.0, (40.0, 50.0))):  # fmt: skip
        common = dict(step=step, ablation="top10_heads", n_units=10, heldout=False)
        rows.append(dict(common, condition="base", seed=-1, hit_at_10=base, drop_percent=0.0))
        rows.append(
            dict(
                common,
                condition="targeted",
                seed=-1,
                hit_at_10=base * (1 - targeted / 100),
                drop_percent=targeted,
            )
        )
        for seed, drop in enumerate(randoms):
            rows.append(
                dict(
                    common,
                    condition="random",
                    seed=seed,
                    hit_at_10=base * (1 - drop / 100),
                    drop_percent=drop,
                )
            )
    return AblationResult.check(pd.DataFrame(rows))


def _log_run(
    tracker: Tracker, model: str, family: str, seed: int, n_layers: int, ablation: bool
) -> tuple[str, pd.DataFrame]:
    aggs = _aggregates(seed, n_layers)
    dynamics = compute_dynamics(aggs, DynamicsConfig(top_frac=0.1, windows=WINDOWS))
    curves, summary = dynamics["dynamics_curves"], dynamics["dynamics_summary"]
    tags = {"gated_lpi.model": model, "gated_lpi.family": family, "gated_lpi.ablation": "top10_heads",
            "gated_lpi.sweep": "sweep1"}  # fmt: skip
    with tracker.run(f"{model}-all-top10_heads", tags=tags) as run_id:
        tracker.log_params({"model.name": model, "relations.categories": ["factual"], "relations.names": [],
                            "relations.source": "bundled", "relations.duplicates": "keep",
                            "model.dtype": "float32", "ablation.rank_by": "signed",
                            "dynamics.top_frac": 0.1, "dynamics.windows.early": [0, 20],
                            "dynamics.windows.late": [20, None], "ablation.name": "top10_heads"})  # fmt: skip
        tracker.log_table(_hits(), "hit_summary")
        tracker.log_table(layer_profiles(aggs), "layer_profiles")
        tracker.log_table(curves, "dynamics_curves")
        tracker.log_table(summary, "dynamics_summary")
        tracker.log_table(lagged_overlaps(aggs, [[0, 30], [10, 28]], 0.1), "dynamics_lagged")
        if ablation:
            tracker.log_table(_ablation(), "ablation")
    return run_id, summary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An old tiny_moe run, its newer rerun, a tiny_dense run without ablation, and a failed run."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts")))
    old, _ = _log_run(tracker, "tiny_moe", "olmoe", 99, 2, ablation=True)
    moe, moe_summary = _log_run(tracker, "tiny_moe", "olmoe", 0, 2, ablation=True)
    dense, dense_summary = _log_run(tracker, "tiny_dense", "olmo", 1, 3, ablation=False)
    with pytest.raises(RuntimeError), tracker.run("broken", tags={"gated_lpi.model": "tiny_moe"}) as failed:
        raise RuntimeError("stage failed")
    return dict(uri=uri, old=old, moe=moe, dense=dense, failed=failed, summaries={"tiny_moe": moe_summary,
                "tiny_dense": dense_summary})  # fmt: skip


def _row(markdown: str, label: str) -> list[str]:
    """The cells of the row labelled ``label``, with report.md's Markdown escapes undone."""
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {md_escape(label)} |"))
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [re.sub(r"\\(.)", r"\1", c).strip() for c in cells]


def _expected(summary: pd.DataFrame, metric: str, unit: str, scale: float, digits: int) -> str:
    value = summary[
        (summary.metric == metric) & (summary.unit == unit) & (summary.window == "all")
    ].value.item()
    return f"{value * scale:.{digits}f}"


@pytest.mark.slow
def test_report_end_to_end(store, tmp_path):
    out = tmp_path / "report"
    assert main(["--tracking-uri", store["uri"], "--out", str(out), "--latest-per-model"]) == 0
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    for title in (
        "Table 2: neuron-level stability",
        "Table 3: layer-level stability",
        "Table 4: HIT@10 drop",
        "Findings: the MoE against the dense model",
    ):
        assert title in html and title in md
    backbone = _row(md, "Low-entropy MoE backbone")  # the verdict table: finding, pair, verdict, count
    assert backbone[1] == "tiny_moe vs tiny_dense" and backbone[3].endswith("of 2")
    assert store["moe"] in html and store["dense"] in html
    assert store["old"] not in html and store["failed"] not in html  # newest FINISHED per (model, ablation)
    assert "published in the paper (not ours)" in html and "paper: OLMoE-1B-7B (published)" in html
    # Table 2, columns: metric, better, tiny_dense, tiny_moe, paper OLMoE, paper OLMo.
    j = _row(md, "J_stab FFN (%), all checkpoints")
    assert j[2].split()[0] == _expected(store["summaries"]["tiny_dense"], "j_stab", "ffn", 100, 1)
    assert j[3].split()[0] == _expected(store["summaries"]["tiny_moe"], "j_stab", "ffn", 100, 1)
    assert j[1] == "—" and not any("▲" in c for c in j[2:4])  # a descriptive measure: no "best"
    early = _row(md, "J_stab FFN (%), window early, steps [0, 20)")
    assert early[4:] == ["22.2 (10K–70K)", "6.3 (10K–70K)"]
    late = _row(md, "R_t ATTN (%), window late, steps [20, end)")
    assert late[2] != "" and late[4:] == ["—", "—"]
    # Table 2 also has the lagged pairs: the value of each run's own table; 28 is matched to step 30.
    lagged = lagged_overlaps(_aggregates(0, 2), [[0, 30]], 0.1)
    ffn = _row(md, "J_lag FFN (%), steps 0 vs 30")
    assert ffn[3].split()[0] == f"{100 * lagged[lagged.unit == 'ffn'].value.item():.1f}"
    random_ffn = _row(md, "J_lag FFN (%), steps 0 vs 30: random sets")
    assert random_ffn[3] == f"{100 * lagged[lagged.unit == 'ffn'].random_baseline.item():.1f}"
    matched = (
        "Lagged pairs matched to the nearest analysed checkpoints: 10 vs 28 -> tiny_dense: steps 10 vs 30"
    )
    assert md_escape(matched) in md  # report.md shows values as text (the arrow's '>' as an entity)
    # Table 3: σ_rel is descriptive too; its rows are the registry's profile metrics.
    s = _row(md, "σ_rel FFN, all checkpoints")
    assert s[1] == "—" and s[2] == _expected(store["summaries"]["tiny_dense"], "sigma_rel", "ffn", 1, 2)
    assert s[4:] == ["0.47 (10K–1.2M)", "5.01 (10K–600K)"]
    # Table 4: only tiny_moe ran an ablation.
    t = _row(md, "top-10 heads: targeted")
    assert (
        t[2] == "not computed in this run"
        and t[3] == "66.67"
        and t[4:] == ["9.44 (checkpoint mean)", "50.43 (checkpoint mean)"]
    )
    # One suite seed: no sd over seeds; the random control is the mean over its random-unit seeds.
    assert _row(md, "top-10 heads: random control")[3] == "25.00"
    assert _row(md, "top-10 heads: targeted − random")[3] == "41.67"
    assert t[1] == "lower" and "▲" not in t[3]  # a drop has a direction, but one value is no comparison
    filtered = _row(md, "top-10 heads: targeted, checkpoints with base HIT@10 ≥ 0.5")
    assert filtered[3] == "50.00" and filtered[4:] == ["—", "—"]
    assert _row(md, "top-10 heads: random control, checkpoints with base HIT@10 ≥ 0.5")[3] == "15.00"
    assert _row(md, "top-10 heads: targeted − random, checkpoints with base HIT@10 ≥ 0.5")[3] == "35.00"
    # Next to every paper comparison: which choices the runs used, unlike the paper's marked.
    choices = [line for line in md.splitlines() if line.startswith("*Choices of these runs")]
    assert len(choices) == 3 and "relations.source=bundled ≠" in choices[2]
    assert (
        md_escape("ablation.rank_by=signed") in choices[2] and md_escape("ablation.rank_by") not in choices[0]
    )
    assert _row(md, "top-1 head: targeted")[2:4] == ["not computed in this run"] * 2
    # Figures: 8 inline PNGs in the HTML, the same files next to the Markdown.
    assert html.count("data:image/png;base64,") == 8 and "src='http" not in html
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(images) == 8 and all((out / name).stat().st_size > 5_000 for name in images)
    assert md_escape("Not computed in this run: tiny_dense.") in md  # Fig. 5 has only tiny_moe


@pytest.mark.slow
def test_selection_by_ids_sweep_and_logging_the_report(store, tmp_path):
    client = MlflowClient(store["uri"])
    (by_id,) = select_runs(client, "gated_lpi_exp", run_ids=[store["old"]]).runs
    assert by_id.info.run_id == store["old"]
    (by_prefix,) = select_runs(client, "gated_lpi_exp", run_ids=[store["old"][:6]]).runs
    assert by_prefix.info.run_id == store["old"]
    sweep = {r.info.run_id for r in select_runs(client, "gated_lpi_exp", sweep="sweep1").runs}
    assert sweep == {store["old"], store["moe"], store["dense"]}
    out = tmp_path / "sweep"
    assert (
        main(["--tracking-uri", store["uri"], "--sweep", "sweep1", "--out", str(out), "--log-artifact"]) == 0
    )
    md = (out / "report.md").read_text()
    # A rerun with the same settings joins its model's column (both listed in the runs table); the newest
    # run's tables are the ones shown.
    assert store["old"] in md and len(_row(md, "J_stab FFN (%), all checkpoints")) == 6
    moe_cell = _row(md, "J_stab FFN (%), all checkpoints")[3].split()[0]
    assert moe_cell == _expected(store["summaries"]["tiny_moe"], "j_stab", "ffn", 100, 1)
    experiment = client.get_experiment_by_name("gated_lpi_exp").experiment_id
    (report_run,) = client.search_runs([experiment], "tags.\"gated_lpi.report\" = '1'")
    assert report_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(report_run.info.run_id, "report")} >= {
        "report/report.html", "report/report.md", "report/fig1_jaccard.png",
    }  # fmt: skip
    newest = {r.info.run_id for r in select_runs(client, "gated_lpi_exp", latest_per_model=True).runs}
    assert newest == {store["moe"], store["dense"]}  # the report run is never selected


def test_bad_selections_exit_2(store, tmp_path, capsys):
    assert (
        main(["--tracking-uri", store["uri"], "--runs", store["failed"], "--out", str(tmp_path / "x")]) == 2
    )
    assert "FAILED" in capsys.readouterr().err
    assert main(["--tracking-uri", store["uri"], "--sweep", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "Known sweeps" in capsys.readouterr().err
    assert (
        main(["--tracking-uri", store["uri"], "--experiment", "missing", "--out", str(tmp_path / "x")]) == 2
    )


def _fake_run(run_id: str, model: str, ablation: str, start: int, **params) -> RunData:
    info = SimpleNamespace(run_id=run_id, start_time=start, run_name=run_id)
    tags = {"gated_lpi.model": model, "gated_lpi.ablation": ablation}
    return RunData(SimpleNamespace(info=info, data=SimpleNamespace(tags=tags, params=params)), tables={})


def test_columns_merge_ablations_and_split_other_settings():
    runs = [
        _fake_run("a" * 32, "olmoe", "top1_head", 1, **{"relations.names": "[]"}),
        _fake_run(
            "b" * 32, "olmoe", "top10_heads", 2, **{"relations.names": "[]", "ablation.name": "top10_heads"}
        ),
        _fake_run("c" * 32, "olmoe", "none", 3, **{"relations.names": "['country_language']"}),
        _fake_run("d" * 32, "olmo", "none", 4),
    ]
    columns = make_columns(runs)
    assert [c.label for c in columns] == ["olmo", "olmoe [cccccccc]", "olmoe [bbbbbbbb]"]
    assert [r.run_id[0] for r in columns[2].runs] == ["b", "a"]  # newest first


def test_ablation_rows_are_the_paper_presets_and_what_runs_computed_named_by_their_labels():
    def column(name: str, label: str | None) -> Column:
        params = {"ablation.label": label} if label else {}
        run = _fake_run(name * 32 if len(name) == 1 else "e" * 32, "olmoe", name, 1, **params)
        table = _ablation()
        run.tables["ablation"] = table.assign(ablation=name)
        return Column("olmoe", [run])

    plain = ablation_labels([])
    assert plain == {
        "top1_head": "top-1 head",
        "top10_heads": "top-10 heads",
        "top1pct_ffn": "top-1% FFN neurons",
    }
    # A run's own label wins; an ablation that is no preset file still gets its row, after the presets.
    labels = ablation_labels([column("top10_heads", "ten heads"), column("probe", "my probe")])
    assert list(labels.items())[1:] == [("top10_heads", "ten heads"), ("top1pct_ffn", "top-1% FFN neurons"),
                                        ("probe", "my probe")]  # fmt: skip
    assert "top3_heads" not in labels  # a preset nobody ran and the paper does not report: no empty row


def test_best_mark_follows_the_registry_direction():
    higher = mark_best(
        Row("x", "hit_at_k", [Cell(0.2), Cell(0.5), Cell(float("nan")), Cell(note="missing")], [])
    )
    assert [c.best for c in higher.cells] == [False, True, False, False] and higher.direction == "higher"
    lower = mark_best(Row("y", "drop_percent", [Cell(0.2), Cell(0.5)], []))
    assert [lower.text(c) for c in lower.cells] == ["0.20 ▲", "0.50"] and lower.direction == "lower"
    single = mark_best(Row("z", "drop_percent", [Cell(0.9), Cell(None, note="not computed in this run")], []))
    assert (
        not any(c.best for c in single.cells) and single.text(single.cells[1]) == "not computed in this run"
    )


def test_markdown_report_escapes_markup_in_names_and_data(tmp_path):
    """A relation, model or run name carrying HTML or Markdown shows as text in report.md, never as
    markup, links, images or a script."""
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts")))
    evil = "<script>alert(1)</script>[x](http://evil.example) *b* |c|"
    aggs = _aggregates(3, 2)
    dynamics = compute_dynamics(aggs, DynamicsConfig(top_frac=0.1, windows=WINDOWS))
    tags = {"gated_lpi.model": evil, "gated_lpi.family": "olmoe", "gated_lpi.ablation": "top10_heads"}
    with tracker.run(evil, tags=tags):
        tracker.log_params({"model.name": evil, "relations.categories": ["factual"], "relations.names": [evil],
                            "dynamics.top_frac": 0.1, "ablation.name": "top10_heads"})  # fmt: skip
        tracker.log_table(_hits(), "hit_summary")
        tracker.log_table(layer_profiles(aggs), "layer_profiles")
        for name in ("dynamics_curves", "dynamics_summary"):
            tracker.log_table(dynamics[name], name)
        tracker.log_table(_ablation(), "ablation")
    out = tmp_path / "report"
    assert main(["--tracking-uri", uri, "--out", str(out)]) == 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page):
        assert "<script" not in text and "&lt;script&gt;" in text
    assert (
        not re.search(r"(?<!\\)\]\(http://evil", md)
        and "\\[x\\]" in md
        and "\\*b\\*" in md
        and "\\|c\\|" in md
    )
    assert md_escape("a|b\nc") == "a\\|b c"


def test_drops_computed_only_near_chance_are_said_to_be_so_not_missing():
    near_chance = _ablation().assign(hit_at_10=lambda t: t["hit_at_10"] * 0.1)  # base HIT@10 0.05 and 0.01
    run = _fake_run("a" * 32, "olmoe", "top10_heads", 1)
    run.tables["ablation"] = near_chance
    rows = {r.label: r for r in table4([Column("olmoe", [run])], min_base_hit10=0.3).rows}
    everything = rows["top-10 heads: targeted"]  # the paper's mean still counts every checkpoint
    assert everything.text(everything.cells[0]) == "66.67"
    for kind in ("targeted", "random control"):
        filtered = rows[f"top-10 heads: {kind}, checkpoints with base HIT@10 ≥ 0.3"]
        assert filtered.text(filtered.cells[0]) == "base HIT@10 below 0.3 at all 3 checkpoints"
    untouched = rows["top-1 head: targeted, checkpoints with base HIT@10 ≥ 0.3"]
    assert untouched.text(untouched.cells[0]) == "not computed in this run"


def _small_run(tracker: Tracker, model: str, params: dict, tags: dict, parent: str | None = None) -> str:
    """A finished run with only a HIT@k table (enough for the runs table and the HIT figure)."""
    tags = {"gated_lpi.model": model, "gated_lpi.ablation": "none", **tags}
    with tracker.run(f"{model}-run", tags=tags, parent_run_id=parent) as run_id:
        tracker.log_params({"model.name": model, "ablation.name": "none", **params})
        tracker.log_table(_hits(), "hit_summary")
    return run_id


def _sweep(tracker: Tracker, folder, models: list[str], **params) -> tuple[str, list[str]]:
    """A sweep as the command line logs it: a parent run for the folder, one nested run per model."""
    folder.mkdir(parents=True)
    parent = sweep_parent(tracker, folder)
    tags = {"gated_lpi.sweep": str(folder.resolve())}
    return parent, [_small_run(tracker, m, {"data.hash": "h1", **params}, tags, parent) for m in models]


def test_the_report_compares_the_latest_sweep_found_by_folder_name_or_id(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts")))
    first, first_runs = _sweep(tracker, tmp_path / "multirun" / "2026-01-31" / "10-00-00", ["a", "b"])
    second, second_runs = _sweep(tracker, tmp_path / "multirun" / "2026-01-31" / "11-00-00", ["c", "d"])
    out = str(tmp_path / "r")

    def shown(*args: str) -> set[str]:
        assert main(["--tracking-uri", uri, "--out", out, *args]) == 0
        html = (tmp_path / "r" / "report.html").read_text()
        return {rid for rid in first_runs + second_runs if rid in html}

    assert shown() == set(second_runs)  # the latest sweep, never its parent run
    assert shown("--sweep", "multirun/2026-01-31/10-00-00") == set(first_runs)  # relative to here (tmp_path)
    assert shown("--sweep", str(tmp_path / "multirun" / "2026-01-31" / "10-00-00")) == set(first_runs)
    assert shown("--sweep", "10-00-00") == set(first_runs)
    assert shown("--sweep", first[:8]) == set(first_runs)
    assert shown("--sweep", second[:6]) == set(second_runs)
    capsys.readouterr()
    assert main(["--tracking-uri", uri, "--out", out, "--sweep", "09-00-00"]) == 2
    err = capsys.readouterr().err
    assert "Known sweeps" in err and f"{second[:8]}  multirun/2026-01-31/11-00-00  (2 runs" in err
    assert err.index("11-00-00") < err.index("10-00-00")  # newest first


def test_runs_measured_under_different_conditions_are_split_into_sections(tmp_path):
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = Tracker(TrackingConfig(uri=uri, artifact_location=str(tmp_path / "artifacts")))
    factual = {"data.hash": "h73", "relations.categories": "['factual']", "attribution.batch_size": "64"}
    everything = {"data.hash": "h381", "relations.categories": "['linguistic', 'factual']"}
    moe = _small_run(tracker, "tiny_moe", factual, {})
    dense = _small_run(tracker, "tiny_dense", {**everything, "attribution.batch_size": "8"}, {})
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "r"), "--runs", moe, dense]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "not measured under the same conditions" in md and "data.hash, relations.categories" in md
    speed = md_escape("attribution.batch_size")  # report.md shows names as text: '_' escaped
    assert speed not in md.split("## Section 1")[0]  # speed settings are no condition
    sections = md.split("## Section ")[1:]
    assert len(sections) == 2 and sections[0].startswith("1 of 2: data.hash=h381")
    for section, (mine, other) in zip(sections, ((dense, moe), (moe, dense)), strict=True):
        assert mine in section and other not in section
    assert (tmp_path / "r" / "s1_hit_curves.png").is_file() and (
        tmp_path / "r" / "s2_hit_curves.png"
    ).is_file()


def test_runs_without_an_ablation_join_the_section_of_their_condition():
    common = {"data.hash": "h", "relations.categories": "['factual']"}
    runs = [
        _fake_run("a" * 32, "m", "top1_head", 3, **common, **{"ablation.rank_by": "abs"}),
        _fake_run("b" * 32, "m", "top10_heads", 2, **common, **{"ablation.rank_by": "signed"}),
        _fake_run("c" * 32, "m", "none", 1, **common),
    ]
    sections = split_sections(runs)
    assert [[r.run_id[0] for c in s.columns for r in c.runs] for s in sections] == [["a", "c"], ["b"]]
    assert [s.differs for s in sections] == [{"ablation.rank_by": "abs"}, {"ablation.rank_by": "signed"}]


def test_a_descriptive_metric_is_never_marked_best():
    row = mark_best(Row("J_stab FFN", "j_stab", [Cell(0.2), Cell(0.5)], []))
    assert not any(c.best for c in row.cells) and row.direction == "—"
