"""Build a suite and print HIT@1/HIT@10 per checkpoint.

Usage::

    python -m gated_lpi_exp.suites tiny_moe            # or tiny_dense, tiny_neox, micro_*, small_moe, small_dense
    python -m gated_lpi_exp.suites --size micro --family olmo
    python -m gated_lpi_exp.suites tiny_moe --cache-dir /tmp/suites --by-category
"""

from __future__ import annotations

import argparse
import time

from gated_lpi_exp.suites.spec import FAMILIES, SIZES, SuiteSpec

NAMED = {
    "tiny_moe": ("olmoe", "tiny"),
    "tiny_dense": ("olmo", "tiny"),
    "micro_moe": ("olmoe", "micro"),
    "micro_dense": ("olmo", "micro"),
    "tiny_neox": ("gpt_neox", "tiny"),
    "micro_neox": ("gpt_neox", "micro"),
    "small_moe": ("olmoe", "small"),
    "small_dense": ("olmo", "small"),
}
"""The suites with a config file in ``conf/model/``: name -> (family, size)."""
SUFFIX = {"olmoe": "moe", "olmo": "dense", "gpt_neox": "neox"}
"""Name suffix of a suite built from ``--size``/``--family``."""


def spec_from_args(args: argparse.Namespace) -> SuiteSpec:
    """The spec named on the command line (a known name, or ``--size``/``--family``)."""
    family, size = NAMED.get(args.name, (args.family, args.size))
    name = args.name or f"{size}_{SUFFIX[family]}"
    return SuiteSpec(name=name, family=family, size=size, seed=args.seed, cache_dir=args.cache_dir)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m gated_lpi_exp.suites", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "name", nargs="?", default=None, help=f"one of {', '.join(NAMED)} (else use --size/--family)"
    )
    parser.add_argument("--size", default="tiny", choices=SIZES)
    parser.add_argument("--family", default="olmoe", choices=FAMILIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="folder holding suites (default: the user cache)")
    parser.add_argument("--by-category", action="store_true", help="also print HIT@k per relation category")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.name is not None and args.name not in NAMED:
        parser.error(f"unknown suite {args.name!r}; choose one of {', '.join(NAMED)} or use --size/--family")

    import torch

    from gated_lpi_exp.data import load_relations
    from gated_lpi_exp.suites.build import build_suite
    from gated_lpi_exp.suites.check import evaluate_suite

    spec = spec_from_args(args)
    started = time.perf_counter()
    root = build_suite(spec, progress=not args.no_progress)
    print(
        f"suite {spec.name} ({spec.family}, {spec.size}) ready in {time.perf_counter() - started:.1f}s: "
        f"{root}"
    )
    torch.set_num_threads(spec.threads)
    facts = load_relations(spec.resolved().relations, template="zs:0")
    table = evaluate_suite(root, facts)
    if not args.by_category:
        table = table[table["category"] == "all"]
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
