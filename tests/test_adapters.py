"""Family adapters: the site table, the dimensions, the final norm's form and the FFN/MoE neurons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gated_lpi_exp.adapters import ADAPTERS, OlmoAdapter, OlmoeAdapter, get_adapter
from gated_lpi_exp.attribution import capture, gated_lpi
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.testing import random_olmo, random_olmoe

IDS = torch.tensor([[5, 9, 13, 4, 22], [7, 3, 31, 0, 0]])
MASK = (IDS != 0).long()


def test_registry_pins_supported_families():
    assert sorted(ADAPTERS) == ["olmo", "olmoe"]


def test_site_tables_are_pinned_and_resolve(tiny_olmoe, tiny_olmo):
    shared = {"backbone", "layer", "o_proj", "post_attn_norm", "mlp", "final_norm", "unembedding"}
    assert set(OlmoeAdapter.SITES) == shared | {"router", "experts"}
    assert set(OlmoAdapter.SITES) == shared | {"gate_proj", "up_proj", "down_proj"}
    for model in (tiny_olmoe, tiny_olmo):
        adapter = get_adapter(model)
        for site, path in adapter.SITES.items():
            layers = range(adapter.n_layers) if "{layer}" in path else [None]
            for layer in layers:
                assert isinstance(adapter.module(site, layer), nn.Module)


def test_dimensions(tiny_olmoe, tiny_olmo):
    moe = get_adapter(tiny_olmoe)
    assert (moe.family, moe.is_moe, moe.n_layers, moe.n_heads, moe.head_dim) == ("olmoe", True, 2, 4, 8)
    assert (moe.n_experts, moe.expert_width, moe.top_k, moe.ffn_neurons) == (8, 16, 2, 128)
    dense = get_adapter(tiny_olmo)
    assert (dense.family, dense.is_moe, dense.ffn_neurons, dense.attn_neurons) == ("olmo", False, 48, 32)


@pytest.mark.parametrize("make", [random_olmoe, random_olmo])
def test_final_norm_spec_reproduces_the_module(make):
    model = make()
    spec = get_adapter(model).final_norm_spec()
    u = torch.randn(5, model.config.hidden_size) * 3 + 1
    by_spec = spec.center(u) * spec.inv_scale(u)[:, None]
    if spec.weight is not None:
        by_spec = by_spec * spec.weight
    if spec.bias is not None:
        by_spec = by_spec + spec.bias
    torch.testing.assert_close(by_spec, model.model.norm(u), atol=1e-6, rtol=1e-5)
    assert spec.kind == ("rms" if make is random_olmoe else "layer")


def test_moe_routing_recomputed_equals_model_choice(tiny_olmoe):
    """The adapter's own top-k (float32 softmax of ``x̂ @ W_router``) picks the experts the model's router
    picked. The two compute the same logits through different kernels, so they may disagree only at a near-tie:
    wherever the choices differ, the swapped experts' router logits are within 1e-5 of each other. Where the
    choices agree, the coefficients are the same float32 computation on the same inputs, hence equal."""
    adapter = get_adapter(tiny_olmoe)
    acts = capture(adapter, IDS, MASK)
    for layer in range(adapter.n_layers):
        chosen = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer], acts.routing[:, layer])
        recomputed = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer])
        agree = (chosen.routed == recomputed.routed).all(-1)  # [batch]
        logits = acts.x_hat[:, layer] @ adapter.router(layer).weight.float().T  # [batch, experts]
        for row in (~agree).nonzero()[:, 0].tolist():
            swapped = chosen.routed[row] ^ recomputed.routed[row]
            assert float(logits[row, swapped].max() - logits[row, swapped].min()) < 1e-5, f"row {row}"
        assert agree.float().mean() > 0.5, "routing disagrees on most examples: not a near-tie effect"
        torch.testing.assert_close(chosen.coef[agree], recomputed.coef[agree], atol=0, rtol=0)


def _moe_output(adapter, acts, layer) -> torch.Tensor:
    """Σ coef · column over the layer's neurons, ``[batch, d]``."""
    neurons = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer], acts.routing[:, layer])
    total = torch.zeros_like(acts.f[:, layer])
    for g in neurons.groups:
        total[g.rows] += neurons.coef[g.rows, g.start : g.start + g.size] @ g.columns.float().T
    return total


def test_norm_topk_prob_renormalises_gates():
    model = random_olmoe(norm_topk_prob=True)
    adapter = get_adapter(model)
    assert adapter.norm_topk_prob
    acts = capture(adapter, IDS, MASK)
    for layer in range(adapter.n_layers):
        torch.testing.assert_close(_moe_output(adapter, acts, layer), acts.f[:, layer], atol=1e-5, rtol=1e-5)


def test_transposed_expert_layout_gives_same_scores(tiny_olmoe):
    targets = torch.tensor([3, 4])
    before = gated_lpi(tiny_olmoe, IDS, MASK, targets, norm="exact")
    for layer in tiny_olmoe.model.layers:
        ex = layer.mlp.experts
        ex.gate_up_proj = nn.Parameter(ex.gate_up_proj.detach().transpose(1, 2).contiguous())
        ex.down_proj = nn.Parameter(ex.down_proj.detach().transpose(1, 2).contiguous())
        ex.is_transposed = True
    after = gated_lpi(tiny_olmoe, IDS, MASK, targets, norm="exact")
    for name in ("ffn", "ffn_layer", "attn"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=1e-5, rtol=0)


def test_unknown_expert_layout_fails_clearly(tiny_olmoe):
    tiny_olmoe.model.layers[1].mlp.experts.is_concatenated = False
    with pytest.raises(AttributionError, match="experts layout"):
        get_adapter(tiny_olmoe)


def test_o_proj_bias_is_rejected():
    with pytest.raises(AttributionError, match="bias"):
        get_adapter(random_olmo(attention_bias=True))


@pytest.mark.parametrize("make", [random_olmoe, random_olmo])
def test_grouped_query_attention_keeps_query_head_layout(make):
    model = make(num_key_value_heads=2)
    adapter = get_adapter(model)
    acts = capture(adapter, IDS, MASK)
    assert acts.z.shape[-1] == adapter.n_heads * adapter.head_dim
    result = gated_lpi(model, IDS, MASK, torch.tensor([3, 4]))
    assert result.heads.shape == (2, adapter.n_layers, adapter.n_heads)
