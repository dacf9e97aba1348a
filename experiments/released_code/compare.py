"""Our scores next to the released notebook's JSON outputs, unit type by unit type.

The notebook writes, per prompt ``n``, ``Output_Dir/<n>/``: ``layer_level_increase.json``,
``head_level_increase.json`` (4 decimals), ``experts_FFN_neuron_increase.json`` (routed experts only),
``attn_neuron_increase.json`` (``layer_head_dim_position``) and ``selected_experts.json``; the runner adds
``extras.json`` (ids, target, logits at T, unrounded heads, summed attention neurons, later-position weight).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from gated_lpi_exp.attribution import final_logits, gated_lpi, predicted_targets
from gated_lpi_exp.compat import released_code

TOP_FRACTION = 0.01
"""The paper's top-1 % sets."""


def notebook_outputs(folder: Path) -> dict:
    """Everything one notebook variant wrote, per prompt number."""
    extras = json.loads((folder / "extras.json").read_text())
    prompts = {}
    for key, extra in extras["prompts"].items():
        d = folder / "Output_Dir" / key
        prompts[int(key)] = {
            **extra,
            **{name: json.loads((d / f"{name}.json").read_text()) for name in _FILES},
        }
    return {"attn_implementation": extras["attn_implementation"], "prompts": prompts}


_FILES = (
    "layer_level_increase",
    "head_level_increase",
    "experts_FFN_neuron_increase",
    "attn_neuron_increase",
    "selected_experts",
)


def left_padded(id_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One left-padded batch of every prompt (the notebook scores them one by one, unpadded)."""
    width = max(map(len, id_lists))
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(id_lists):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def our_scores(model, ids: torch.Tensor, mask: torch.Tensor, compat: bool) -> dict:
    """Targets, logits at T and every score, in the default mode or inside ``released_code``."""
    with released_code(model) if compat else nullcontext():
        targets = predicted_targets(model, ids, mask)
        logits = final_logits(model, ids, mask)
        scores = gated_lpi(model, ids, mask, targets, attn_positions=True)
    return {"targets": targets, "logits": logits, "scores": scores}


def dense_expert_scores(entries: list[dict], layers: int, width: int, n_experts: int) -> torch.Tensor:
    """The notebook's expert-neuron list as ``[layers, experts*width]`` (0 for unrouted experts)."""
    out = torch.zeros(layers, n_experts * width, dtype=torch.float64)
    for e in entries:
        out[e["layer"], e["experts"] * width + e["neuron"]] = e["increase"]
    return out


def top_set(scores: torch.Tensor) -> set[int]:
    """The top 1 % by signed score, as the notebooks sort (ties: lower index first)."""
    flat = scores.reshape(-1).double()
    k = math.ceil(TOP_FRACTION * flat.numel())
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    return set(order[:k])


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def compare_prompt(ours: dict, row: int, nb: dict, dims: dict) -> dict:
    """Largest absolute differences per unit type for one prompt, and whether targets and routing agree."""
    scores = ours["scores"]
    layers, heads, head_dim = dims["layers"], dims["heads"], dims["head_dim"]
    width, n_experts = dims["expert_width"], dims["experts"]
    attn_layer = torch.tensor([v for _, v in nb["layer_level_increase"]["attn_list"]])
    ffn_layer = torch.tensor([v for _, v in nb["layer_level_increase"]["ffn_list"]])
    heads_nb = torch.tensor([v for _, v in nb["heads_unrounded"]]).view(layers, heads)
    heads_rounded = torch.tensor([v for _, v in nb["head_level_increase"]["all_head_increase"]]).view(
        layers, heads
    )
    experts_nb = dense_expert_scores(nb["experts_FFN_neuron_increase"], layers, width, n_experts)
    positions = torch.zeros_like(scores.attn_positions[row], dtype=torch.float64)  # [layers, seq, H*dh]
    for entry in nb["attn_neuron_increase"]:
        layer, head, dim, pos = map(int, entry["neuron"].split("_"))
        positions[layer, pos, head * head_dim + dim] = entry["increase"]
    length = len(nb["input_ids"])
    routed_nb = [sorted(nb["selected_experts"][f"layer_{layer}"][-1]) for layer in range(layers)]
    routed_ours = [sorted(scores.routed[row, layer].nonzero().flatten().tolist()) for layer in range(layers)]
    ours_ffn = scores.ffn[row].double()

    def gap(a, b) -> float:
        return float((a.double() - b.double()).abs().max())

    return {
        "target_equal": int(ours["targets"][row]) == nb["predict_index"],
        "routed_equal": routed_nb == routed_ours,
        "logits_at_t": gap(ours["logits"][row], torch.tensor(nb["final_logits"])),
        "attn_layer": gap(scores.attn_layer[row], attn_layer),
        "ffn_layer": gap(scores.ffn_layer[row], ffn_layer),
        "heads": gap(scores.heads[row], heads_nb),
        "heads_vs_4_decimals": gap(scores.heads[row], heads_rounded),
        "expert_neurons": gap(ours_ffn, experts_nb),
        "attn_neurons_per_position": gap(scores.attn_positions[row, :, :length], positions[:, :length]),
        "attn_neurons_summed": gap(scores.attn[row], torch.tensor(nb["summed_attn_neurons"])),
        "top1pct_expert_jaccard": jaccard(top_set(ours_ffn), top_set(experts_nb)),
    }


def summarise(rows: list[dict]) -> dict:
    """Worst case over prompts: max of differences, all() of agreements, min of Jaccards."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], bool):
            out[key] = f"{sum(values)}/{len(values)}"
        elif "jaccard" in key:
            out[key] = min(values)
        else:
            out[key] = max(values)
    return out


def flaw_measures(released: dict, causal: dict, dims: dict) -> dict:
    """What running the notebooks without the causal mask changes, from their own two runs."""
    rows = []
    for n, a in released["prompts"].items():
        b = causal["prompts"][n]
        shape = (dims["layers"], dims["experts"], dims["expert_width"])
        sets = [top_set(dense_expert_scores(x["experts_FFN_neuron_increase"], shape[0], shape[2], shape[1]))
                for x in (a, b)]  # fmt: skip
        rows.append(
            {
                "later_weight": a["later_weight"],
                "logits_at_t": float(
                    (torch.tensor(a["final_logits"]) - torch.tensor(b["final_logits"])).abs().max()
                ),
                "target_changed": a["predict_index"] != b["predict_index"],
                "top1pct_expert_jaccard": jaccard(*sets),
            }
        )
    return summarise(rows)
