"""Build a MoE/dense suite pair, measure the build, and draw their learning curves (HIT@1/HIT@10 over steps).

Usage::

    python -m gated_lpi_exp.suites.report --size tiny --out experiments/tiny_suites

writes ``<out>/learning_curves.png`` and prints Markdown tables (the numbers in the README come from here).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from gated_lpi_exp.suites.spec import SIZES, SuiteSpec

LABELS = {"olmoe": "MoE (OlmoeForCausalLM)", "olmo": "dense (OlmoForCausalLM)"}
CATEGORY_ORDER = ("linguistic", "commonsense", "factual", "bias")


def build_and_evaluate(
    size: str, cache_dir: str | None, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Build (or reuse) both families of ``size``.

    Returns:
        HIT@k rows of every checkpoint of both families, and each build's wall-clock seconds.
    """
    import torch

    from gated_lpi_exp.data import load_relations
    from gated_lpi_exp.suites.build import build_suite
    from gated_lpi_exp.suites.check import evaluate_suite

    frames, seconds = [], {}
    for family in ("olmoe", "olmo"):
        name = f"{size}_{'moe' if family == 'olmoe' else 'dense'}"
        spec = SuiteSpec(name=name, family=family, size=size, seed=seed, cache_dir=cache_dir)
        started = time.perf_counter()
        root = build_suite(spec)
        seconds[family] = time.perf_counter() - started
        torch.set_num_threads(spec.threads)
        frame = evaluate_suite(root, load_relations(spec.resolved().relations, template="zs:0"))
        frame.insert(0, "family", family)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), seconds


def plot_curves(table: pd.DataFrame, path: str | Path, title: str) -> None:
    """Overall HIT@1 and HIT@10 of both families, and HIT@1 per category for each, against training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    overall = table[table["category"] == "all"]
    for ax, metric in zip(axes[0], ("hit@1", "hit@10"), strict=True):
        for family, group in overall.groupby("family", sort=False):
            ax.plot(group["step"], group[metric], marker="o", ms=3, label=LABELS[family])
        ax.set_title(f"{metric.upper()} (all relations, template zs:0)")
    for ax, family in zip(axes[1], ("olmoe", "olmo"), strict=True):
        rows = table[(table["family"] == family) & (table["category"] != "all")]
        for category in CATEGORY_ORDER:
            group = rows[rows["category"] == category]
            ax.plot(group["step"], group["hit@1"], marker=".", label=category)
        ax.set_title(f"HIT@1 by category: {LABELS[family]}")
    for ax in axes.flat:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("training step (symlog)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_tables(table: pd.DataFrame) -> str:
    """The overall curve (one row per checkpoint) and the final checkpoint per category, as Markdown."""
    overall = table[table["category"] == "all"].pivot_table(
        index=["step", "tokens"], columns="family", values=["hit@1", "hit@10"]
    )
    lines = [
        "| step | tokens | MoE HIT@1 | MoE HIT@10 | dense HIT@1 | dense HIT@10 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for (step, tokens), row in overall.iterrows():
        cells = [
            row[("hit@1", "olmoe")],
            row[("hit@10", "olmoe")],
            row[("hit@1", "olmo")],
            row[("hit@10", "olmo")],
        ]
        lines.append(f"| {step} | {tokens:,} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    last = table[table["step"] == table["step"].max()]
    lines += [
        "",
        "| category | n | MoE HIT@1 | MoE HIT@10 | dense HIT@1 | dense HIT@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for category in ("all", *CATEGORY_ORDER):
        moe, dense = (
            last[(last["family"] == f) & (last["category"] == category)].iloc[0] for f in ("olmoe", "olmo")
        )
        cells = [moe["hit@1"], moe["hit@10"], dense["hit@1"], dense["hit@10"]]
        lines.append(f"| {category} | {moe['n']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m gated_lpi_exp.suites.report")
    parser.add_argument("--size", default="tiny", choices=SIZES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default="experiments/tiny_suites")
    args = parser.parse_args(argv)
    table, seconds = build_and_evaluate(args.size, args.cache_dir, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(table, out / "learning_curves.png", f"{args.size} suites: learning the bundled relations")
    print(
        ", ".join(f"{LABELS[f]}: {s:.1f}s" for f, s in seconds.items()),
        f"(total {sum(seconds.values()):.1f}s)",
    )
    print(markdown_tables(table))


if __name__ == "__main__":
    main()
