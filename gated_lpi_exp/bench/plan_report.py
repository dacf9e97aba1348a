"""Print a :class:`~gated_lpi_exp.bench.planner.Plan`, and the ``plan`` command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gated_lpi_exp.bench import costs
from gated_lpi_exp.bench.machine import Rates, machine_info
from gated_lpi_exp.bench.planner import DEFAULT_BANDWIDTH, Plan, make_plan, weight_memory


def human_seconds(seconds: float) -> str:
    """``93 s``, ``12.4 min``, ``5.1 h`` or ``3.2 d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "min" else 1):
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def human_bytes(n: float) -> str:
    """``1.5 GB`` style (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_plan(plan: Plan, cfg_line: str = "") -> str:
    """The plan as text: model, checkpoints, examples, work, time, storage."""
    d, w = plan.dims, plan.work
    ffn = f"{d.experts} experts x {d.width} (top-{d.top_k})" if d.is_moe else f"FFN {d.width}"
    ffn += f" + {d.shared} shared-expert neurons" if d.shared else ""
    n_ckpt = plan.checkpoints.value
    est = " (estimate)" if plan.checkpoints.estimate else ""
    lines = [
        f"== plan: {plan.model}{' - ' + cfg_line if cfg_line else ''}",
        f"model: {d.family}, {d.layers} layers, d {d.hidden}, {ffn}, {d.heads} heads x {d.head_dim}, "
        f"vocab {d.vocab}, {d.total_params / 1e9:.3g}B params [{d.source}]",
        f"checkpoints: {n_ckpt}{est} [{plan.checkpoints.note}]",
        f"examples: {plan.examples.value}{' (estimate)' if plan.examples.estimate else ''} "
        f"[{plan.examples.note}] in {len(plan.batches)} batches of <= {max(plan.batches)}",
        "work per checkpoint (elements = prompts x units x vocab; FLOPs = projection matmuls):",
    ]
    for part, label in (
        ("ffn", "FFN/expert neurons"),
        ("attn", "ATTN neurons"),
        ("heads+layers", "heads + layers"),
    ):
        p = w.parts.get(part, {"elements": 0.0, "flops": 0.0})
        lines.append(f"  {label:20} {p['elements']:11.3e} elements  {p['flops']:11.3e} FLOPs")
    lines.append(
        f"  {'total':20} {w.elements:11.3e} elements  {w.matmul_flops:11.3e} FLOPs "
        f"(+ {w.forward_flops:.2e} forward-pass FLOPs)"
    )
    lines += [
        "time (attribution only):",
        f"  this machine: {human_seconds(plan.cpu_s)} per checkpoint, {human_seconds(plan.cpu_s * n_ckpt)} "
        f"for the run{est} [{plan.cpu_method}]",
        f"  one H100, float32: {human_seconds(plan.h100_s)} per checkpoint, "
        f"{human_seconds(plan.h100_s * n_ckpt)} for the run (least {human_seconds(plan.h100_least_s)} "
        f"per checkpoint) [{costs.H100_RATES.matmul_flops_per_s / 1e12:.1f} TFLOP/s FP32, "
        f"{costs.H100_RATES.exp_sum_per_s / 1e12:.2f}e12 exp/s, {costs.H100_EFFICIENCY:.0%} of peak, "
        f"{costs.H100_CALL_OVERHEAD_S * 1e3:.1f} ms per chunk call]",
        f"  rates here: matmul {plan.rates.matmul_flops_per_s / 1e9:.1f} GFLOP/s, exp-sum "
        f"{plan.rates.exp_sum_per_s / 1e9:.2f} G/s, eager logsumexp "
        f"{(plan.rates.exp_sum_eager_per_s or plan.rates.exp_sum_per_s) / 1e9:.2f} G/s "
        f"[{plan.rates_note}]",
    ]
    if plan.sensitivity:
        lines.append("  shared projections are recomputed per batch; per checkpoint at a larger batch size:")
        for label, (cpu, gpu) in plan.sensitivity.items():
            lines.append(
                f"    attribution.batch_size={label}: {human_seconds(cpu)} here, {human_seconds(gpu)} on H100"
            )
    per_ckpt = plan.download_bytes / max(n_ckpt, 1)
    lines.append(
        f"storage: download {human_bytes(plan.download_bytes)}, peak disk {human_bytes(plan.disk_bytes)} "
        f"[{plan.storage_note}; {human_bytes(per_ckpt or plan.disk_bytes / max(n_ckpt, 1))} per checkpoint]"
    )
    if plan.download_bytes:
        fetch = per_ckpt / plan.bandwidth
        lines.append(
            f"streamed at {plan.bandwidth / 1e6:.0f} MB/s (--bandwidth): {human_seconds(fetch)} per checkpoint, "
            f"{human_seconds(fetch * n_ckpt)} of downloads; the walk (attribution only; prefetch={plan.prefetch}"
            f"{': downloads hidden behind compute, or compute behind downloads' if plan.prefetch else ''}) "
            f"takes about {human_seconds(plan.streamed_seconds(plan.h100_s))} on one H100, "
            f"{human_seconds(plan.streamed_seconds(plan.cpu_s))} on this machine"
        )
    lines.append(
        f"memory: weights {human_bytes(weight_memory(d)[plan.dtype])} as model.dtype={plan.dtype} "
        + ", ".join(
            f"({human_bytes(size)} with model.dtype={dtype})"
            for dtype, size in weight_memory(d).items()
            if dtype not in (plan.dtype, "float16")
        )
        + "; attribution works in float32 within attribution.memory_budget_mb either way"
    )
    return "\n".join(lines)


def plan_summary(plan: Plan) -> dict:
    """The plan's main numbers, JSON-ready (``bench plan --json``)."""
    return {
        "model": plan.model,
        "params": plan.dims.total_params,
        "checkpoints": plan.checkpoints.value,
        "checkpoints_estimated": plan.checkpoints.estimate,
        "examples": plan.examples.value,
        "examples_estimated": plan.examples.estimate,
        "batches": plan.batches,
        "elements": plan.work.elements,
        "matmul_flops": plan.work.matmul_flops,
        "cpu_s_per_checkpoint": plan.cpu_s,
        "cpu_method": plan.cpu_method,
        "h100_s_per_checkpoint": plan.h100_s,
        "download_bytes": plan.download_bytes,
        "disk_bytes": plan.disk_bytes,
        "rates": plan.rates.to_dict(),
    }


def main(argv: list[str]) -> None:
    """``python -m gated_lpi_exp.bench plan [--rates JSON] [--measure] [--json PATH] [overrides...]``."""
    from gated_lpi_exp.compose import compose_run_config

    parser = argparse.ArgumentParser(
        prog="python -m gated_lpi_exp.bench plan",
        description="Cost of a run before anything is downloaded (Hydra overrides as for the run).",
    )
    parser.add_argument("--rates", type=Path, help="a benchmark report (--json) to take the rates from")
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=DEFAULT_BANDWIDTH / 1e6,
        help="download rate from the hub, MB/s (100)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="then run the attribution stage on the first checkpoint (cold, nothing stored) and print "
        "measured / planned seconds",
    )
    parser.add_argument("--json", type=Path, help="write the plan (and the measurement) here")
    parser.add_argument("overrides", nargs="*", help="e.g. model=olmoe checkpoints=paper")
    args = parser.parse_args(argv)
    cfg = compose_run_config(args.overrides)
    rates = efficiency = None
    if args.rates:
        report = json.loads(args.rates.read_text())
        rates = Rates.from_dict(report["rates"])
        shapes = report.get("shapes", {}).values()
        if shapes:
            efficiency = min(s["efficiency_vs_ceiling"] for s in shapes)
    plan = make_plan(cfg, rates, efficiency, f"from {args.rates}" if args.rates else "", args.bandwidth * 1e6)
    info = machine_info()
    print(format_plan(plan, " ".join(args.overrides)))
    print(
        f"this machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, kernel={info['kernel']}"
    )
    report = {"overrides": args.overrides, "machine": info, "plan": plan_summary(plan)}
    if args.measure:
        from gated_lpi_exp.bench.measure import format_measurement, measure_first_checkpoint

        measurement = measure_first_checkpoint(cfg, plan)
        print(format_measurement(measurement))
        report["measurement"] = measurement.to_dict()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
