"""``ablate`` against hand-written hook ablations, exact restoration of the model, and the ablation's
MLflow metrics."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pandas as pd
import pytest
import torch

from gated_lpi_exp.adapters import FAMILIES, get_adapter
from gated_lpi_exp.attribution import position_ids_from_mask
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.interventions import ablate
from gated_lpi_exp.metrics import MIN_BASE_HIT10, drop_percent
from gated_lpi_exp.schemas import AblationResult
from gated_lpi_exp.stages.ablation import ablation_metrics
from gated_lpi_exp.testing import random_model

IDS = torch.tensor([[5, 9, 13, 4, 22, 6, 7], [0, 0, 7, 3, 31, 2, 8]])
MASK = (IDS != 0).long()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, position_ids=position_ids_from_mask(MASK))
    return out.logits[MASK.bool()]  # [tokens, V], every real position


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_identical(model, snapshot) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(state[k], v), k


def _zero_head_inputs(model, heads: dict[int, list[int]]) -> list:
    """Reference: a pre-hook zeroing the heads' slices of the o_proj input."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    handles = []
    for layer, hs in heads.items():

        def hook(module, args, hs=hs):
            z = args[0].clone()
            for h in hs:
                z[..., h * head_dim : (h + 1) * head_dim] = 0
            return (z,)

        handles.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(hook))
    return handles


def _zero_dense_activations(model, neurons: dict[int, list[int]]) -> list:
    """Reference: a pre-hook zeroing m_j at the down_proj input."""

    def make(js):
        def hook(module, args):
            m = args[0].clone()
            m[..., js] = 0
            return (m,)

        return hook

    return [
        model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(make(js))
        for layer, js in neurons.items()
    ]


def _recomputed_moe(model, neurons: dict[int, list[int]]) -> list:
    """Reference: replace each MoE block's output by a per-token recompute with m_{e,j} zeroed."""

    def make(zeroed: list[int]):
        def hook(module, args, out):
            x = args[0].reshape(-1, args[0].shape[-1])  # [tokens, d]
            _, weights, index = module.gate(x)
            ex = module.experts
            width = ex.down_proj.shape[2]
            y = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for g, e in zip(weights[t], index[t].tolist(), strict=True):
                    gate, up = (ex.gate_up_proj[e] @ x[t]).chunk(2)
                    m = ex.act_fn(gate) * up
                    for n in zeroed:
                        if n // width == e:
                            m[n % width] = 0
                    y[t] += g * (ex.down_proj[e] @ m)
            return y.reshape(out.shape)

        return hook

    return [model.model.layers[layer].mlp.register_forward_hook(make(ns)) for layer, ns in neurons.items()]


def _reference(model, handles) -> torch.Tensor:
    try:
        return _logits(model)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("fixture", ["tiny_olmoe", "tiny_olmo"])
def test_head_ablation_equals_zeroed_o_proj_input(request, fixture):
    model = request.getfixturevalue(fixture)
    heads = {0: [1, 3], 1: [0]}
    base = _logits(model)
    with ablate(model, heads=heads):
        got = _logits(model)
    want = _reference(model, _zero_head_inputs(model, heads))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - base).abs().max() > 1e-2


def test_dense_ffn_ablation_equals_zeroed_activations(tiny_olmo):
    neurons = {0: [0, 5, 47], 1: [3]}
    with ablate(tiny_olmo, ffn_neurons=neurons):
        got = _logits(tiny_olmo)
    want = _reference(tiny_olmo, _zero_dense_activations(tiny_olmo, neurons))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - _logits(tiny_olmo)).abs().max() > 1e-3


def test_expert_neuron_ablation_equals_recomputed_moe(tiny_olmoe):
    width = tiny_olmoe.model.layers[0].mlp.experts.down_proj.shape[2]
    # Several neurons of several experts; the same j in another expert must stay untouched.
    neurons = {
        0: [0 * width + 2, 3 * width + 2, 5 * width + 0, 5 * width + 15],
        1: list(range(width, 3 * width)),
    }
    with ablate(tiny_olmoe, ffn_neurons=neurons):
        got = _logits(tiny_olmoe)
    want = _reference(tiny_olmoe, _recomputed_moe(tiny_olmoe, neurons))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - _logits(tiny_olmoe)).abs().max() > 1e-3


@pytest.mark.parametrize("fixture", ["tiny_olmoe", "tiny_olmo"])
def test_model_restored_bit_for_bit(request, fixture):
    model = request.getfixturevalue(fixture)
    snapshot, base = _snapshot(model), _logits(model)
    with ablate(model, heads={0: [0, 0, 2]}, ffn_neurons={1: [4, 4, 9], 0: [1]}):
        pass
    _assert_bit_identical(model, snapshot)
    assert torch.equal(_logits(model), base)


@pytest.mark.parametrize("fixture", ["tiny_olmoe", "tiny_olmo"])
def test_restored_when_the_body_raises(request, fixture):
    model = request.getfixturevalue(fixture)
    snapshot, base = _snapshot(model), _logits(model)
    with pytest.raises(RuntimeError, match="boom"), ablate(model, heads={1: [2]}, ffn_neurons={0: [7]}):
        assert not torch.equal(_logits(model), base)
        raise RuntimeError("boom")
    _assert_bit_identical(model, snapshot)


@pytest.mark.parametrize(
    ("heads", "ffn", "match"),
    [
        ({5: [0]}, None, "layer 5"),
        ({0: [4]}, None, "head index 4"),
        (None, {1: [128]}, "FFN neuron index 128"),
    ],
)
def test_out_of_range_units_fail_before_touching_the_model(tiny_olmoe, heads, ffn, match):
    snapshot = _snapshot(tiny_olmoe)
    with pytest.raises(AttributionError, match=match), ablate(tiny_olmoe, heads=heads, ffn_neurons=ffn):
        pass
    _assert_bit_identical(tiny_olmoe, snapshot)


def _layers(model) -> list:
    return list(model.gpt_neox.layers if hasattr(model, "gpt_neox") else model.model.layers)


def _zero_inputs(module, columns: list[int]):
    def hook(mod, args):
        x = args[0].clone()
        x[..., columns] = 0
        return (x,)

    return module.register_forward_pre_hook(hook)


@contextmanager
def _activations_zeroed(model, heads: dict[int, list[int]], neurons: dict[int, list[int]]):
    """Reference written here: the heads' o_proj input slices and the neurons' ``m`` are zeroed directly.

    ``m`` is zeroed at the down projection's input where the FFN has a module for it (dense layers, shared
    experts) and, inside a fused expert, by zeroing the neuron's up-projection row (``act(g)·0 = 0``).
    """
    handles, saved = [], []
    for layer, hs in heads.items():
        attn = _layers(model)[layer]
        o_proj = attn.attention.dense if hasattr(attn, "attention") else attn.self_attn.o_proj
        head_dim = o_proj.in_features // model.config.num_attention_heads
        handles.append(_zero_inputs(o_proj, [h * head_dim + k for h in hs for k in range(head_dim)]))
    for layer, ns in neurons.items():
        mlp = _layers(model)[layer].mlp
        if not hasattr(mlp, "experts"):
            down = getattr(mlp, "dense_4h_to_h", None) or mlp.down_proj
            handles.append(_zero_inputs(down, ns))
            continue
        experts = mlp.experts.gate_up_proj  # [E, 2w, d], gate rows first
        width = experts.shape[1] // 2
        routed = [n for n in ns if n < experts.shape[0] * width]
        shared = [n - experts.shape[0] * width for n in ns if n not in routed]
        for n in routed:
            row = (n // width, width + n % width)
            saved.append((experts, row, experts.data[row].clone()))
            experts.data[row] = 0
        if shared:
            module = getattr(mlp, "shared_expert", None) or mlp.shared_experts
            handles.append(_zero_inputs(module.down_proj, shared))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for weight, row, value in saved:
            weight.data[row] = value


def _family_units(model) -> tuple[dict, dict]:
    """Heads and FFN neurons to ablate: in MoE layers, neurons of several experts and of the shared one."""
    adapter = get_adapter(model)
    last = adapter.n_layers - 1
    neurons = {0: [0, 5, adapter.ffn_neurons - 1], last: [3]}
    if adapter.is_moe:
        w, routed = adapter.expert_width, adapter.routed_width
        neurons[last] = [2, 3 * w + 2, 5 * w, 5 * w + w - 1] + (
            [routed, routed + 3] if adapter.shared_width else []
        )
        if not adapter.routed_layer(0):  # a dense layer of a mixed stack: its last neuron, not padding
            neurons[0] = [0, 5, model.model.layers[0].mlp.down_proj.weight.shape[1] - 1]
    return {0: [1, 3], last: [0]}, neurons


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_ablates_exactly_the_chosen_units_and_restores_them(family):
    model = random_model(family)
    heads, neurons = _family_units(model)
    snapshot, base = _snapshot(model), _logits(model)
    for kwargs in ({"heads": heads}, {"ffn_neurons": neurons}):
        with ablate(model, **kwargs):
            got = _logits(model)
        with _activations_zeroed(model, kwargs.get("heads", {}), kwargs.get("ffn_neurons", {})):
            want = _logits(model)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{family} {list(kwargs)}")
        assert (got - base).abs().max() > 1e-3
    _assert_bit_identical(model, snapshot)
    assert torch.equal(_logits(model), base)


def _ablation_rows(base: float, targeted: float, randoms: list[float]) -> pd.DataFrame:
    rows = [
        dict(condition="base", seed=-1, hit_at_10=base),
        dict(condition="targeted", seed=-1, hit_at_10=targeted),
    ]
    rows += [dict(condition="random", seed=s, hit_at_10=h) for s, h in enumerate(randoms)]
    table = pd.DataFrame(rows).assign(step=10, ablation="top1_head", n_units=1, heldout=False)
    table["drop_percent"] = [drop_percent(base, h) for h in table["hit_at_10"]]
    return AblationResult.check(table[list(AblationResult.to_schema().columns)])


def test_ablation_metrics_are_fractions_and_absent_where_the_base_is_near_chance():
    known = ablation_metrics(_ablation_rows(0.8, 0.2, [0.6, 0.8]))
    # Drops as fractions of the base: (0.8 - 0.2) / 0.8; random seeds 0.25 and 0, mean 0.125, sd 0.125.
    assert known["ablation.drop.targeted"] == pytest.approx(0.75)
    assert known["ablation.drop.random_mean"] == pytest.approx(0.125)
    assert known["ablation.drop.random_sd"] == pytest.approx(0.125)
    assert known["ablation.hit_at_10.targeted"] == pytest.approx(0.2)
    near_chance = ablation_metrics(_ablation_rows(MIN_BASE_HIT10 / 2, 0.05, [0.2]))
    assert math.isnan(near_chance["ablation.drop.targeted"]) and math.isnan(
        near_chance["ablation.drop.random_mean"]
    )
    assert near_chance["ablation.hit_at_10.base"] == pytest.approx(MIN_BASE_HIT10 / 2)
