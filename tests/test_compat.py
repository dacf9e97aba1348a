"""``released_code(model)``: the released notebooks' scoring inside the block, nothing changed outside it."""

from __future__ import annotations

import pytest
import torch

from gated_lpi_exp.adapters import get_adapter
from gated_lpi_exp.attribution import capture, final_logits, gated_lpi, predicted_targets
from gated_lpi_exp.compat import active_mode, compat_mode, released_code
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.interventions import ablate
from gated_lpi_exp.testing import random_olmo, random_olmoe

MAKERS = {"olmoe": random_olmoe, "olmo": random_olmo}


def _prompts(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(seed))


def _bidirectional_reference(model, ids: torch.Tensor) -> torch.Tensor:
    """Full logits with transformers' own SDPA told the layers are not causal (unpadded prompts only).

    An independent route to non-causal attention: no mask at all, and ``is_causal=False`` on every attention
    module, which SDPA reads when no mask is given.
    """
    previous = model.config._attn_implementation
    modules = [layer.self_attn for layer in model.model.layers]
    model.config._attn_implementation = "sdpa"
    for module in modules:
        module.is_causal = False
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits.float()  # [batch, seq, vocab]
    finally:
        model.config._attn_implementation = previous
        for module in modules:
            module.is_causal = True


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_inside_released_code_the_model_is_not_causal_and_matches_an_independent_bidirectional_forward(
    family,
):
    """Same weights, SDPA vs eager attention in float32: 1e-5."""
    model = MAKERS[family]()
    ids = _prompts()
    mask = torch.ones_like(ids)
    reference = _bidirectional_reference(model, ids)
    with torch.no_grad():
        causal = model(input_ids=ids, use_cache=False).logits
    with released_code(model), torch.no_grad():
        inside = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        at_t = final_logits(model, ids, mask)
        targets = predicted_targets(model, ids, mask)
    torch.testing.assert_close(inside, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(at_t, reference[:, -1], atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, reference[:, -1].argmax(-1))
    # The first position now depends on later tokens; causally it cannot.
    assert float((inside[:, 0] - causal[:, 0]).abs().max()) > 1e-2


def test_released_code_uses_epsilon_1e_6_in_phi_and_the_model_keeps_its_own_epsilon():
    """A final-norm ε of 10 makes the projection's ε visible; both sides are float32 formulas: 1e-5."""
    model = random_olmoe()
    model.model.norm.variance_epsilon = 10.0
    ids = _prompts(1)
    mask = torch.ones_like(ids)
    targets = torch.tensor([4, 9, 30])
    with released_code(model):
        h_final = capture(get_adapter(model), ids, mask).h_final  # [batch, d]
        inside = gated_lpi(model, ids, mask, targets)
    logits = (
        model.model.norm.weight * h_final * torch.rsqrt(h_final.pow(2).mean(-1, keepdim=True) + 1e-6)
    ) @ (model.lm_head.weight.T)
    expected = torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(inside.base_logprob.double(), expected, atol=1e-5, rtol=0)
    assert model.model.norm.variance_epsilon == 10.0  # the forward pass's own norm is untouched


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_a_padded_example_scores_inside_released_code_as_it_does_alone(family):
    """Padding is masked as keys, so batching cannot leak into scores: 1e-5 (float32 kernels)."""
    model = MAKERS[family]()
    ids = _prompts(2)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    mask[1, 4:] = 0  # right padding
    targets = torch.tensor([4, 9, 30])
    with released_code(model):
        batched = gated_lpi(model, ids, mask, targets)
        for row in range(3):
            keep = mask[row].bool()
            alone = gated_lpi(
                model, ids[row : row + 1, keep], mask[row : row + 1, keep], targets[row : row + 1]
            )
            for kind in ("ffn", "attn", "heads", "ffn_layer", "attn_layer"):
                torch.testing.assert_close(
                    getattr(batched, kind)[row], getattr(alone, kind)[0], atol=1e-5, rtol=0
                )
    assert batched.attn_positions is not None  # per-position units are the mode's default


def test_outside_released_code_nothing_changes_also_after_an_error():
    model = random_olmoe()
    ids = _prompts(3)
    mask = torch.ones_like(ids)
    targets = torch.tensor([4, 9, 30])
    before = gated_lpi(model, ids, mask, targets)
    logits_before = final_logits(model, ids, mask)
    with pytest.raises(RuntimeError, match="boom"), released_code(model):
        assert active_mode(model) is not None
        raise RuntimeError("boom")
    with released_code(model):
        gated_lpi(model, ids, mask, targets)
    after = gated_lpi(model, ids, mask, targets)
    assert active_mode(model) is None and not model.model._forward_pre_hooks
    assert model.config._attn_implementation == "eager"
    assert torch.equal(final_logits(model, ids, mask), logits_before)
    for kind in ("ffn", "attn", "heads", "ffn_layer", "attn_layer", "base_logprob"):
        assert torch.equal(getattr(after, kind), getattr(before, kind)), kind
    assert after.attn_positions is None


def test_ablation_inside_released_code_zeroes_heads_of_the_non_causal_model():
    """Ablating inside the mode equals the independent non-causal forward with the same columns zeroed: 1e-5."""
    model = random_olmoe()
    ids = _prompts(4)
    mask = torch.ones_like(ids)
    with released_code(model), ablate(model, heads={0: [1], 1: [0, 3]}):
        inside = final_logits(model, ids, mask)
    with ablate(model, heads={0: [1], 1: [0, 3]}):
        reference = _bidirectional_reference(model, ids)[:, -1]
    torch.testing.assert_close(inside, reference, atol=1e-5, rtol=1e-5)


def test_released_code_refuses_nesting_flash_attention_and_other_modes():
    model = random_olmoe()
    with released_code(model), pytest.raises(AttributionError, match="already active"), released_code(model):
        pass
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AttributionError, match="eager or sdpa"), released_code(model):
        pass
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="released_code"):
        compat_mode("published", model)
    with compat_mode("none", model) as same:
        assert same is model and active_mode(model) is None
