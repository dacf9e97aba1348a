"""How far each protocol choice moves each published number, on the project's tiny suites.

Runs the default protocol and one variant per choice where the paper's text, its released code and this
project's default differ, each as plain config overrides of ``python -m gated_lpi_exp``, on ``tiny_moe`` and
``tiny_dense`` with the three ablations, then writes ``table.md`` (and ``table.csv``) beside this file:

    python experiments/sensitivity/run_study.py                 # run what is missing, then write the table
    python experiments/sensitivity/run_study.py --collect-only  # only rebuild the table from finished runs
    python experiments/sensitivity/run_study.py --smoke         # minutes: 1 model, 3 checkpoints, 2 samples
                                                                # per relation, 2 variants, under work/smoke/

Runs, logs and the generated data live under ``experiments/sensitivity/work/`` (not committed); a run that
finished is not run again. Every variant runs on one data source that has repeated subjects, so the
``duplicates`` choice is measured on real repeats: the bundled relations plus repeats in two relations at the
upstream files' rate (see :func:`write_source_with_repeats`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.data import BUNDLED_DIR, cleaning_report, load_relations
from gated_lpi_exp.errors import GatedLPIError
from gated_lpi_exp.metrics import MIN_BASE_HIT10
from gated_lpi_exp.report.tables import checkpoint_mean_drops

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
"""Runs, logs and data; ``--smoke`` moves it to ``work/smoke`` (and writes its table there)."""
SMOKE_OVERRIDES = ("checkpoints.limit=3", "relations.max_per_relation=2")
SMOKE_VARIANTS = ("default", "rank_by")
MODELS = ("tiny_moe", "tiny_dense")
ABLATIONS = ("top1_head", "top10_heads", "top1pct_ffn")
EXPERIMENT = "sensitivity"
log = logging.getLogger("sensitivity")


@dataclass(frozen=True)
class Choice:
    """One protocol choice: our default, the alternative, and the overrides that select the alternative."""

    name: str
    ours: str
    other: str
    who: str
    """Where the alternative comes from (the paper's text, its released code, a common alternative)."""
    overrides: tuple[str, ...]


CHOICES = (
    Choice("target", "gold", "predicted", "released code", ("attribution.target=predicted",)),
    Choice("rank_by", "signed", "abs", "|I| as in J_stab", ("ablation.rank_by=abs",)),
    Choice("duplicates", "keep", "drop", "first sample per subject", ("relations.duplicates=drop",)),
    Choice("norm", "frozen", "exact", "the model's own norm", ("attribution.norm=exact",)),
    Choice("dtype", "float32", "bfloat16", "common on GPUs", ("model.dtype=bfloat16",)),
    Choice("attn_positions", "summed", "per position", "released code", ("attribution.attn_positions=true",)),
    Choice(
        "released_code",
        "this engine",
        "released code",
        "released code",
        ("attribution.compat=released_code",),
    ),
)
"""Every choice measured (a choice whose option this version of the package lacks is listed as such)."""

METRICS = (
    ("j_stab", "ffn", "j_stab.ffn.mean", 100.0, "J_stab FFN (%)"),
    ("j_stab", "attn", "j_stab.attn.mean", 100.0, "J_stab ATTN (%)"),
    ("r_t", "ffn", "r_t.ffn.mean", 100.0, "R_t FFN (%)"),
    ("r_t", "attn", "r_t.attn.mean", 100.0, "R_t ATTN (%)"),
    ("rho_avg", "ffn", "rho_avg.ffn", 1.0, "ρ_avg FFN"),
    ("rho_avg", "attn", "rho_avg.attn", 1.0, "ρ_avg ATTN"),
    ("sigma_rel", "ffn", "sigma_rel.ffn", 1.0, "σ_rel FFN"),
    ("sigma_rel", "attn", "sigma_rel.attn", 1.0, "σ_rel ATTN"),
)
"""(metric, unit, MLflow summary metric, display scale, label) of the dynamics numbers in the table."""

# Upstream-like repeats: the 12 upstream files repeat 29 of 906 samples (3.2%), all in two relations,
# adjective antonym (2 exact repeats, 15 other antonyms of the same word) and object superclass (4 exact
# repeats, 8 with a coarser class listed first, e.g. carrot: plant, then vegetable). The same shape here.
ANTONYM_ALTERNATIVES = {
    "hot": "chilly",
    "big": "tiny",
    "fast": "sluggish",
    "happy": "angry",
    "tall": "little",
}
COARSER_CLASS = {"fruit": "plant", "vegetable": "plant", "mammal": "animal", "bird": "animal"}
EXACT_REPEATS = {"adjective_antonym": 1, "object_superclass": 2}


def write_source_with_repeats(root: Path) -> Path:
    """The bundled relations in the upstream layout, plus upstream-like repeated subjects in two files."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(BUNDLED_DIR, root, ignore=shutil.ignore_patterns("*.md"))
    _add_repeats(root / "linguistic" / "adjective_antonym.json", _antonym_repeats)
    _add_repeats(root / "commonsense" / "object_superclass.json", _superclass_repeats)
    return root


def _add_repeats(path: Path, rule) -> None:
    doc = json.loads(path.read_text())
    doc["samples"] = rule(doc["samples"])
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _antonym_repeats(samples: list[dict]) -> list[dict]:
    out = list(samples)
    out += [
        dict(s, object=ANTONYM_ALTERNATIVES[s["subject"]])
        for s in samples
        if s["subject"] in ANTONYM_ALTERNATIVES
    ]
    return out + samples[-EXACT_REPEATS["adjective_antonym"] :]


def _superclass_repeats(samples: list[dict]) -> list[dict]:
    out, coarse_left = [], 4
    for s in samples:
        if coarse_left and s["object"] in COARSER_CLASS:
            out.append(dict(s, object=COARSER_CLASS[s["object"]]))  # listed first, as upstream
            coarse_left -= 1
        out.append(s)
    return out + samples[-EXACT_REPEATS["object_superclass"] :]


def available(choice: Choice) -> bool:
    """Whether this version of the package has the choice's options."""
    try:
        compose_run_config(list(choice.overrides))
    except Exception:  # an unknown key or value: the option does not exist in this version
        return False
    return True


def common_overrides(model: str, source: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        *extra,
        f"model={model}",
        f"relations.source={source}",
        f"tracking.uri=sqlite:///{WORK}/mlflow.db",
        f"tracking.artifact_location={WORK}/mlruns",
        f"tracking.experiment={EXPERIMENT}",
        "ablation.random_seeds=0",  # the random controls do not enter the table; they would triple its cost
        "progress=false",
    ]


def finished_runs(client: MlflowClient, run_name: str) -> dict[str, str]:
    """Ablation -> id of the newest FINISHED run named ``run_name``."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    runs = client.search_runs(
        [exp.experiment_id],
        f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    out: dict[str, str] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("gated_lpi.ablation", "?"), run.info.run_id)
    return out


def run_variant(
    client: MlflowClient,
    model: str,
    variant: str,
    overrides: tuple[str, ...],
    source: Path,
    extra: tuple[str, ...] = (),
) -> None:
    """One sweep over the three ablations (attribution computed once, then taken from the cache)."""
    name = f"{model}-{variant}"
    if set(finished_runs(client, name)) >= set(ABLATIONS):
        log.info("%s: finished earlier, not run again", name)
        return
    args = [*common_overrides(model, source, extra), f"tracking.run_name={name}", *overrides]
    args += [f"ablation={','.join(ABLATIONS)}", f"hydra.sweep.dir={WORK}/multirun/{name}", "-m"]
    log_path = WORK / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: running (log: %s)", name, log_path)
    with log_path.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "gated_lpi_exp", *args], stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}); see {log_path}")


def run_values(client: MlflowClient, runs: dict[str, str]) -> dict[str, float]:
    """The table's numbers of one variant: dynamics summaries and each ablation's mean drops."""
    values: dict[str, float] = {}
    any_run = client.get_run(next(iter(runs.values())))
    for _, _, key, scale, label in METRICS:
        values[label] = any_run.data.metrics.get(key, math.nan) * scale
    for ablation, run_id in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "tables/ablation.parquet", tmp)
            table = pd.read_parquet(path)
        for threshold, suffix in (
            (None, "all checkpoints"),
            (MIN_BASE_HIT10, f"base HIT@10 ≥ {MIN_BASE_HIT10:g}"),
        ):
            targeted, _ = checkpoint_mean_drops(table, ablation, threshold)
            values[f"drop {ablation} (%), {suffix}"] = float(targeted.mean())
    return values


def data_summary(source: Path) -> str:
    """One line on the study's data: samples kept and dropped by each duplicates policy."""
    keep, drop = load_relations(source), load_relations(source, duplicates="drop")
    kinds = cleaning_report(keep)["kind"].value_counts().to_dict()
    return (
        f"{len(keep)} samples with duplicates=keep, {len(drop)} with drop ({kinds.get('duplicate', 0)} exact "
        f"repeats and {kinds.get('conflict', 0)} subjects repeated with another object, in 2 of 12 relations)"
    )


def _cell(value: float, base: float) -> str:
    if math.isnan(value):
        return "n/a"
    delta = value - base
    return (
        f"{value:.3g} ({'+' if delta >= 0 else '−'}{abs(delta):.2g})"
        if not math.isnan(base)
        else f"{value:.3g}"
    )


CONTROL_SEEDS = (0, 1, 2)
"""Seeds of the yardstick: the default protocol on the data with as many random samples left out as
``duplicates=drop`` leaves out, so a choice's move can be read against what any such change does."""


def write_control_source(source: Path, root: Path, seed: int) -> Path:
    """``source`` without as many randomly chosen samples (seeded) as ``duplicates=drop`` removes from it."""
    n_out = len(load_relations(source)) - len(load_relations(source, duplicates="drop"))
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(source, root)
    files = sorted(root.glob("*/*.json"))
    docs = {f: json.loads(f.read_text()) for f in files}
    slots = [(f, i) for f in files for i in range(len(docs[f]["samples"]))]
    rng = random.Random(seed)
    for f, i in sorted(
        rng.sample(slots, n_out), key=lambda slot: -slot[1]
    ):  # from the end: indices stay valid
        del docs[f]["samples"][i]
    for f, doc in docs.items():
        f.write_text(json.dumps(doc, indent=2) + "\n")
    return root


def _row_cells(label: str, base: dict, by_variant: dict, choices: list[Choice]) -> list[str]:
    cells = [f"{base[label]:.3g}"]
    for c in choices:
        values = by_variant.get(c.name)
        cells.append("not run" if values is None else _cell(values.get(label, math.nan), base[label]))
    controls = [by_variant[v][label] for v in by_variant if v.startswith("control")]
    spread = max((abs(v - base[label]) for v in controls if not math.isnan(v)), default=math.nan)
    return cells + ["n/a" if math.isnan(spread) else f"{spread:.2g}"]


def write_table(
    results: dict[str, dict[str, dict[str, float]]],
    choices: list[Choice],
    absent: list[Choice],
    source: Path,
    out: Path = HERE,
) -> str:
    """``table.md``: per model, each number under our default and under each alternative (Δ in brackets),
    and the largest move of the yardstick (random samples left out); ``table.csv``: the same, long."""
    lines = [
        "# Sensitivity of the published numbers to the protocol's choices (tiny suites)",
        "",
        f"Generated by `python experiments/sensitivity/run_study.py`. Data: {data_summary(source)}. Checkpoints: "
        "every checkpoint of each suite (13, steps 0–800). Each column changes one choice from our default "
        "(first column); a cell is the value under that choice and, in brackets, how far it moved. Last "
        f"column, a yardstick: the largest move, over {len(CONTROL_SEEDS)} seeds, when as many random samples "
        "are left out as `duplicates=drop` leaves out (the default protocol otherwise).",
        "",
    ]
    if absent:
        lines += [
            "Not measured, because this version of the package lacks the option: "
            + "; ".join(
                f"{c.name} ({c.ours} → {c.other}, {c.who}: `{' '.join(c.overrides)}`)" for c in absent
            )
            + ".",
            "",
        ]
    rows = []
    for model, by_variant in results.items():
        base = by_variant.get("default", {})
        header = ["number", "ours (default)"] + [f"{c.name}: {c.ours} → {c.other} ({c.who})" for c in choices]
        header.append("yardstick: random samples left out, largest move")
        lines += [f"## {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in base:
            lines.append(f"| {label} | " + " | ".join(_row_cells(label, base, by_variant, choices)) + " |")
            rows += [
                dict(
                    model=model, number=label, variant=v, default=base[label], value=vals.get(label, math.nan)
                )
                for v, vals in by_variant.items()
            ]
        lines.append("")
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--collect-only", action="store_true", help="only rebuild the table from finished runs"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check the study runs end to end in minutes: the first model, 3 checkpoints, 2 samples per "
        "relation, the default and one variant, no yardstick; everything under work/smoke/",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    global WORK
    out = HERE
    if args.smoke:
        WORK = out = HERE / "work" / "smoke"
        args.models = args.models[:1]
    WORK.mkdir(parents=True, exist_ok=True)
    source = write_source_with_repeats(WORK / "data")
    client = MlflowClient(f"sqlite:///{WORK}/mlflow.db")
    choices = [c for c in CHOICES if available(c)]
    absent = [c for c in CHOICES if c not in choices]
    variants = [("default", (), source)] + [(c.name, c.overrides, source) for c in choices]
    variants += [
        (f"control{seed}", (), write_control_source(source, WORK / f"control{seed}", seed))
        for seed in ([] if args.smoke else CONTROL_SEEDS)
    ]
    if args.smoke:
        variants = [v for v in variants if v[0] in SMOKE_VARIANTS]
    extra = SMOKE_OVERRIDES if args.smoke else ()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model in args.models:
        results[model] = {}
        for variant, overrides, data in variants:
            if not args.collect_only:
                try:
                    run_variant(client, model, variant, overrides, data, extra)
                except GatedLPIError as exc:
                    log.error("%s-%s: %s", model, variant, exc)
            runs = finished_runs(client, f"{model}-{variant}")
            if runs:
                results[model][variant] = run_values(client, runs)
    (out / "table.md").write_text(write_table(results, choices, absent, source, out) + "\n")
    log.info("wrote %s", out / "table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
