"""The small suite pair: populations large enough for 1% sets, paired by total parameters, clear errors."""

from __future__ import annotations

import pytest

from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.errors import ConfigurationError
from gated_lpi_exp.metrics import top_count
from gated_lpi_exp.suites.model import model_config
from gated_lpi_exp.suites.spec import SuiteSpec, suite_dir


def _config(family: str):
    spec = SuiteSpec(name=f"small_{family}", family=family, size="small").resolved()
    return spec, model_config(spec, vocab_size=1700, pad_id=0, eos_id=1)


def test_every_one_percent_set_of_the_small_pair_holds_at_least_100_ffn_neurons_and_heads_are_many():
    (moe_spec, moe), (_, dense) = _config("olmoe"), _config("olmo")
    ffn = {
        "moe": moe.num_hidden_layers * moe.num_experts * moe.intermediate_size,
        "dense": dense.num_hidden_layers * dense.intermediate_size,
    }
    assert ffn == {"moe": 10_240, "dense": 10_240}
    assert {top_count(n, 0.01) for n in ffn.values()} == {103}
    heads = moe.num_hidden_layers * moe.num_attention_heads
    assert heads == dense.num_hidden_layers * dense.num_attention_heads == 64  # top-10 heads: 16%
    # The MoE routes 8 of 64 experts: 160 active FFN neurons per token and layer against the dense 1,280.
    assert moe.num_experts_per_tok * moe.intermediate_size * 8 == dense.intermediate_size
    assert moe_spec.checkpoint_steps == [0, 16, 23, 33, 47, 66, 95, 135, 193, 275, 393, 561, 800]


def test_the_small_pair_has_similar_total_parameters():
    """Built from the configs only (no training): FFN totals match exactly; the router and the OLMoE
    QK-norm add a little to the MoE."""
    import torch
    from transformers import OlmoeForCausalLM, OlmoForCausalLM

    sizes = {}
    for family, cls in (("olmoe", OlmoeForCausalLM), ("olmo", OlmoForCausalLM)):
        _, config = _config(family)
        with torch.device("meta"):
            sizes[family] = sum(p.numel() for p in cls(config).parameters())
    assert abs(sizes["olmoe"] - sizes["olmo"]) / sizes["olmo"] < 0.03


def test_the_tiny_suites_keep_their_cache_folders():
    """The fields added for the small pair are hashed only when set: cached tiny suites stay valid."""
    assert suite_dir(SuiteSpec(name="tiny_moe", family="olmoe", size="tiny")).name == "tiny_moe-1da3973afd65"
    assert (
        suite_dir(SuiteSpec(name="tiny_dense", family="olmo", size="tiny")).name == "tiny_dense-f83e297fd208"
    )


def test_olmoe_heads_wider_than_the_residual_fail_with_the_reason():
    spec = SuiteSpec(family="olmoe", size="small", head_dim=160)
    with pytest.raises(ConfigurationError, match="QK-norm by hidden_size"):
        spec.resolved()
    SuiteSpec(family="olmo", size="small", head_dim=160).resolved()  # the dense family allows it


def test_expert_widths_the_experts_kernel_cannot_take_fail_with_the_reason():
    with pytest.raises(ConfigurationError, match="multiple of 4"):
        SuiteSpec(family="olmoe", size="small", expert_width=10).resolved()


@pytest.mark.parametrize("name", ["small_moe", "small_dense", "small_dense_active"])
def test_the_small_model_configs_compose(name):
    cfg = compose_run_config([f"model={name}", "model.suite.seed=2"])
    assert cfg.model.kind == "suite" and cfg.model.suite.size == "small" and cfg.model.suite.seed == 2
