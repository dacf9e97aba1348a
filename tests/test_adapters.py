"""Family adapters: the site table, the dimensions, the final norm's form and the FFN/MoE neurons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from gated_lpi_exp.adapters import (
    ADAPTERS,
    FAMILIES,
    MOE_FAMILIES,
    GPTNeoXAdapter,
    ModelAdapter,
    Olmo2Adapter,
    OlmoAdapter,
    OlmoeAdapter,
    Qwen2MoeAdapter,
    build_registry,
    get_adapter,
)
from gated_lpi_exp.attribution import capture, gated_lpi
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.testing import random_model, random_olmo, random_olmoe

IDS = torch.tensor([[5, 9, 13, 4, 22], [7, 3, 31, 0, 0]])
MASK = (IDS != 0).long()


def test_registry_pins_supported_families():
    assert tuple(sorted(ADAPTERS)) == FAMILIES
    assert FAMILIES == (
        "deepseek_v3", "gpt_neox", "llama", "mistral", "mixtral", "olmo", "olmo2", "olmo3", "olmoe",
        "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    )  # fmt: skip
    assert MOE_FAMILIES == ("deepseek_v3", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe")


def test_an_incomplete_adapter_fails_when_registered():
    class Half(ModelAdapter):
        model_types = ("half",)

        def final_norm_spec(self):
            raise AssertionError

    with pytest.raises(TypeError, match="ffn_neurons_at, ffn_slices"):
        build_registry((Half,))
    with pytest.raises(TypeError, match="claimed by"):
        build_registry((OlmoAdapter, OlmoAdapter))


@pytest.mark.parametrize("family", FAMILIES)
def test_site_tables_resolve_on_every_family(family):
    adapter = get_adapter(random_model(family))
    assert adapter.family == family
    for site, path in adapter.SITES.items():
        layers = [m for m in range(adapter.n_layers) if adapter.routed_layer(m)] or [0]
        for layer in layers if "{layer}" in path else [None]:
            assert isinstance(adapter.module(site, layer), nn.Module), (family, site)
    for site, read in adapter.reads.items():
        assert read is None or read[0] in adapter.SITES, (family, site)


def test_site_tables_are_pinned():
    shared = {"backbone", "layer", "o_proj", "ffn_norm", "mlp", "final_norm", "unembedding"}
    assert set(OlmoeAdapter.SITES) == shared | {"router", "experts"}
    assert set(OlmoAdapter.SITES) == shared | {"down_proj"}
    assert set(Olmo2Adapter.SITES) == shared - {"ffn_norm"} | {"down_proj", "attn_post_norm", "ffn_post_norm"}
    assert set(GPTNeoXAdapter.SITES) == shared | {"up_proj", "down_proj"}
    assert set(Qwen2MoeAdapter.SITES) == shared | {"router", "experts", "shared_expert_gate"}


def test_dimensions(tiny_olmoe, tiny_olmo):
    moe = get_adapter(tiny_olmoe)
    assert (moe.family, moe.is_moe, moe.n_layers, moe.n_heads, moe.head_dim) == ("olmoe", True, 2, 4, 8)
    assert (moe.n_experts, moe.expert_width, moe.top_k, moe.ffn_neurons) == (8, 16, 2, 128)
    dense = get_adapter(tiny_olmo)
    assert (dense.family, dense.is_moe, dense.ffn_neurons, dense.attn_neurons) == ("olmo", False, 48, 32)
    qwen3 = get_adapter(random_model("qwen3"))  # 4 query heads x 12 over 2 key/value heads, d = 32
    assert (qwen3.n_heads, qwen3.head_dim, qwen3.attn_neurons) == (4, 12, 48)
    shared = get_adapter(random_model("qwen2_moe"))  # 8 experts x 16, then a 24-wide shared expert
    assert (shared.routed_width, shared.shared_width, shared.ffn_neurons) == (128, 24, 152)
    assert shared.locate_ffn(127) == (7, 15) and shared.locate_ffn(130) == (8, 2)
    deepseek = get_adapter(
        random_model("deepseek_v3")
    )  # layer 0 dense (48 wide), 2 shared x 16, v_head_dim 6
    assert (deepseek.head_dim, deepseek.attn_neurons, deepseek.ffn_neurons) == (6, 24, 160)
    assert deepseek.moe_layers == [1] and not deepseek.routed_layer(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_final_norm_spec_reproduces_the_module(family):
    model = random_model(family)
    adapter = get_adapter(model)
    spec = adapter.final_norm_spec()
    u = torch.randn(5, model.config.hidden_size) * 3 + 1
    by_spec = spec.center(u) * spec.inv_scale(u)[:, None]
    if spec.weight is not None:
        by_spec = by_spec * spec.weight
    if spec.bias is not None:
        by_spec = by_spec + spec.bias
    torch.testing.assert_close(by_spec, adapter.final_norm()(u), atol=1e-6, rtol=1e-5)
    assert spec.kind == ("layer" if family in ("olmo", "gpt_neox") else "rms")
    assert (spec.bias is not None) == (family == "gpt_neox")


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_routing_recomputed_equals_model_choice(family):
    """The router run on the captured ``x̂`` picks the experts the model's router picked in the forward pass.
    The two runs see the same inputs in differently shaped batches, so they may disagree only at a near-tie:
    wherever the choices differ, the swapped experts' selection scores are within 1e-5 of each other. Where
    the choices agree, the coefficients are the same float32 computation on the same inputs, hence equal."""
    adapter = get_adapter(random_model(family))
    acts = capture(adapter, IDS, MASK)
    for layer in adapter.moe_layers:
        chosen = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer], acts.routing[:, layer])
        recomputed = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer])
        agree = (chosen.routed == recomputed.routed).all(-1)  # [batch]
        scores = _selection_scores(adapter, layer, acts.x_hat[:, layer])  # [batch, experts]
        for row in (~agree).nonzero()[:, 0].tolist():
            swapped = chosen.routed[row] ^ recomputed.routed[row]
            assert float(scores[row, swapped].max() - scores[row, swapped].min()) < 1e-5, f"row {row}"
        assert agree.float().mean() > 0.5, "routing disagrees on most examples: not a near-tie effect"
        torch.testing.assert_close(chosen.coef[agree], recomputed.coef[agree], atol=0, rtol=0)
    assert (acts.routing[:, [m for m in range(adapter.n_layers) if not adapter.routed_layer(m)]] == -1).all()


def _selection_scores(adapter, layer: int, x_hat: torch.Tensor) -> torch.Tensor:
    """What the router ranks experts by: its logits, or DeepSeek's biased sigmoid scores."""
    router = adapter.router(layer)
    logits = x_hat @ router.weight.float().T
    bias = getattr(router, "e_score_correction_bias", None)
    return logits if bias is None else torch.sigmoid(logits) + bias


def _moe_output(adapter, acts, layer) -> torch.Tensor:
    """Σ coef · column over the layer's neurons, ``[batch, d]``."""
    neurons = adapter.ffn_neurons_at(layer, acts.x_hat[:, layer], acts.routing[:, layer])
    total = torch.zeros_like(acts.f[:, layer])
    for g in neurons.groups:
        total[g.rows] += neurons.coef[g.rows, g.start : g.start + g.size] @ g.block().T
    return total


def test_norm_topk_prob_renormalises_gates():
    model = random_olmoe(norm_topk_prob=True)
    adapter = get_adapter(model)
    assert adapter.router(0).norm_topk_prob
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


def test_a_mismatched_o_proj_is_rejected():
    model = random_olmo()
    model.model.layers[1].self_attn.o_proj = nn.Linear(24, 32, bias=False)
    with pytest.raises(AttributionError, match="o_proj takes 24 inputs"):
        get_adapter(model)


def test_padding_of_a_mixed_stack_scores_zero_and_ablates_nothing():
    model = random_model("deepseek_v3")
    adapter = get_adapter(model)
    result = gated_lpi(model, IDS, MASK, torch.tensor([3, 4]))
    assert (result.ffn[:, 0, 48:] == 0).all() and (result.ffn[:, 0, :48] != 0).float().mean() > 0.9
    assert not result.routed[:, 0].any() and (result.routed[:, 1].sum(-1) == adapter.top_k).all()
    assert adapter.ffn_slices(0, [50, 159]) == []


@pytest.mark.parametrize("make", [random_olmoe, random_olmo])
def test_grouped_query_attention_keeps_query_head_layout(make):
    model = make(num_key_value_heads=2)
    adapter = get_adapter(model)
    acts = capture(adapter, IDS, MASK)
    assert acts.z.shape[-1] == adapter.n_heads * adapter.head_dim
    result = gated_lpi(model, IDS, MASK, torch.tensor([3, 4]))
    assert result.heads.shape == (2, adapter.n_layers, adapter.n_heads)


def test_docs_list_exactly_the_registered_families():
    root = Path(__file__).resolve().parents[1]
    supported = (root / "docs" / "attribution.md").read_text().split("Supported: ", 1)[1].split("(the", 1)[0]
    assert re.findall(r"`(\w+)`", supported) == list(FAMILIES)
    readme = (root / "README.md").read_text().split("`family` (the checkpoints' `model_type`, one of ", 1)[1]
    assert re.findall(r"`(\w+)`", readme.split(";", 1)[0]) == list(FAMILIES)
