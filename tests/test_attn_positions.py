"""Attention neurons per source position: the split is exact, and each unit's score is its brute-force value."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from gated_lpi_exp.adapters import get_adapter
from gated_lpi_exp.attribution import capture, gated_lpi, last_token_positions, position_ids_from_mask
from gated_lpi_exp.attribution.positions import prompt_relative, reduce_positions
from gated_lpi_exp.compat import released_code
from gated_lpi_exp.testing import TINY_SHAPES, random_model, random_olmo, random_olmoe

MAKERS = {"olmoe": random_olmoe, "olmo": random_olmo}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three prompts: left padded, right padded, full."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[1, 5:] = 0
    return ids, mask, torch.tensor([5, 11, 40])


def _transformers_coefficients(model, ids, mask) -> torch.Tensor:
    """``p[h, T, j] · v[h, j, k]`` from transformers' own eager attention weights and a hook on v_proj."""
    assert (
        model.config.clip_qkv is None and model.config.num_key_value_heads == model.config.num_attention_heads
    )
    values = []
    hooks = [
        layer.self_attn.v_proj.register_forward_hook(lambda m, a, out: values.append(out.detach()))
        for layer in model.model.layers
    ]
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    output_attentions=True, use_cache=False)  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    last = last_token_positions(mask)
    rows = torch.arange(ids.shape[0])
    heads = model.config.num_attention_heads
    per_layer = []
    for probs, v in zip(out.attentions, values, strict=True):  # [batch, heads, q, k], [batch, k, H*dh]
        at_t = probs[rows, :, last, :]  # [batch, heads, k]
        v = v.view(*v.shape[:2], heads, -1)  # [batch, k, heads, dh]
        per_layer.append((at_t.transpose(1, 2)[..., None] * v).flatten(2))  # [batch, k, H*dh]
    return torch.stack(per_layer, dim=1)  # [batch, layers, k, H*dh]


@pytest.mark.parametrize("family", sorted(MAKERS))
@pytest.mark.parametrize("compat", [False, True])
def test_per_position_contributions_sum_to_the_attention_neuron_contribution(family, compat):
    """Σ_j c_{h,k,j} = c_{h,k} on the contribution vectors; float32 sums of a handful of terms, so 1e-5."""
    model = MAKERS[family]()
    ids, mask, _ = _batch()
    adapter = get_adapter(model)
    with released_code(model) if compat else nullcontext():
        acts = capture(adapter, ids, mask, positions=True)
    for layer in range(adapter.n_layers):
        w_o = adapter.o_proj(layer).weight.float()  # [d, H*dh]
        per_position = torch.einsum("bjn,dn->bjd", acts.z_pos[:, layer], w_o)  # Σ_k c_{h,k,j} per position
        per_unit = torch.einsum("bjn,dn->bnd", acts.z_pos[:, layer], w_o)  # Σ_j c_{h,k,j} per unit
        whole = acts.z[:, layer, :, None] * w_o.T  # c_{h,k} = z_{h,k} W_O[:, h*dh+k]
        torch.testing.assert_close(per_unit, whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_position.sum(1), acts.a[:, layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(TINY_SHAPES))
def test_every_family_splits_its_attention_neurons_by_position_exactly(family):
    """GQA, MLA value widths, post-norms, parallel blocks: Σ_j z_pos = z (float32 sums: 1e-5), the
    per-position units go through the same post-norm freezing as the neurons, and padding scores 0."""
    model = random_model(family)
    ids, mask, targets = _batch(6)
    adapter = get_adapter(model)
    acts = capture(adapter, ids, mask, positions=True)
    torch.testing.assert_close(acts.z_pos.sum(2), acts.z, atol=1e-5, rtol=1e-5)
    result = gated_lpi(model, ids, mask, targets, attn_positions=True)
    assert result.attn_positions.shape == (3, adapter.n_layers, 7, adapter.attn_neurons)
    assert bool((result.attn_positions[1, :, 5:] == 0).all()) and bool(result.attn_positions.abs().amax() > 0)


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_per_position_coefficients_equal_transformers_own_attention_weights_times_values(family):
    """The recording attention against transformers' eager weights (float32, same math): 1e-6."""
    model = MAKERS[family]()
    ids, mask, _ = _batch(1)
    with torch.no_grad():
        expected = _transformers_coefficients(model, ids, mask)
        got = capture(get_adapter(model), ids, mask, positions=True).z_pos
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def _brute_score(model, adapter, u_base, column, coef, h_final, target, eps) -> float:
    """log p(w | base + coef·col) − log p(w | base) with the final norm frozen at h_L, written out by hand."""
    gain = model.model.norm.weight.float() if hasattr(model.model.norm, "weight") else 1.0
    center = adapter.final_norm_spec().kind == "layer"

    def logprob(u):
        u = u - u.mean() if center else u
        h = h_final - h_final.mean() if center else h_final
        logits = model.lm_head.weight.float() @ (gain * u / torch.sqrt(h.pow(2).mean() + eps))
        return torch.log_softmax(logits.double(), dim=0)[target]

    return float(logprob(u_base + coef * column) - logprob(u_base))


@pytest.mark.parametrize("family", sorted(MAKERS))
@pytest.mark.parametrize("compat", [False, True])
def test_per_position_scores_equal_a_brute_force_projection(family, compat):
    """Each per-position unit's score from φ written by hand (float64 log-softmax): 2e-5 for float32 kernels."""
    model = MAKERS[family]()
    ids, mask, targets = _batch(2)
    adapter = get_adapter(model)
    with released_code(model) if compat else nullcontext():
        result = gated_lpi(model, ids, mask, targets, attn_positions=True)
        acts = capture(adapter, ids, mask, positions=True)
    eps = 1e-6 if compat else adapter.final_norm_spec().eps
    gen = torch.Generator().manual_seed(3)
    for row in range(ids.shape[0]):
        first = int(mask[row].nonzero()[0])
        length = int(mask[row].sum())
        assert int(result.prompt_lengths[row]) == length
        for _ in range(6):
            layer = int(torch.randint(adapter.n_layers, (1,), generator=gen))
            pos = int(torch.randint(length, (1,), generator=gen))
            unit = int(torch.randint(adapter.attn_neurons, (1,), generator=gen))
            column = adapter.o_proj(layer).weight[:, unit].float()
            coef = acts.z_pos[row, layer, first + pos, unit]
            expected = _brute_score(model, adapter, acts.r_in[row, layer], column, coef,
                                    acts.h_final[row], int(targets[row]), eps)  # fmt: skip
            assert float(result.attn_positions[row, layer, pos, unit]) == pytest.approx(expected, abs=2e-5)


def test_padding_positions_score_exactly_zero_and_a_padded_row_equals_the_prompt_alone():
    """Padding never scores (exactly 0); a row scores as alone to 1e-5 (float32 batched vs single kernels)."""
    model = random_olmoe()
    ids, mask, targets = _batch(4)
    batched = gated_lpi(model, ids, mask, targets, attn_positions=True)
    for row in range(ids.shape[0]):
        keep = mask[row].bool()
        alone = gated_lpi(model, ids[row : row + 1, keep], mask[row : row + 1, keep], targets[row : row + 1],
                          attn_positions=True)  # fmt: skip
        length = int(keep.sum())
        assert bool((batched.attn_positions[row, :, length:] == 0).all())
        torch.testing.assert_close(
            batched.attn_positions[row, :, :length], alone.attn_positions[0], atol=1e-5, rtol=0
        )


def test_positions_are_off_by_default_and_leave_every_other_score_unchanged():
    """Same forward math either way (eager), so the other scores agree to float32 rounding: 1e-6."""
    model = random_olmoe()
    ids, mask, targets = _batch(5)
    plain = gated_lpi(model, ids, mask, targets)
    assert plain.attn_positions is None and plain.prompt_lengths is None
    assert model.config._attn_implementation == "eager"
    with_positions = gated_lpi(model, ids, mask, targets, attn_positions=True)
    assert model.config._attn_implementation == "eager"  # the recording implementation is gone again
    for kind in ("ffn", "attn", "heads", "ffn_layer", "attn_layer"):
        torch.testing.assert_close(getattr(with_positions, kind), getattr(plain, kind), atol=1e-6, rtol=0)


def test_position_reductions_by_hand():
    scores = torch.tensor([[[[0.1, -0.5], [-0.3, 0.2], [9.0, 9.0]]]])  # [batch 1, layers 1, seq 3, n 2]
    lengths = torch.tensor([2])  # the third position is padding and must be ignored
    torch.testing.assert_close(reduce_positions(scores, lengths, "absmax"), torch.tensor([[[-0.3, -0.5]]]))
    torch.testing.assert_close(reduce_positions(scores, lengths, "max"), torch.tensor([[[0.1, 0.2]]]))
    torch.testing.assert_close(reduce_positions(scores, lengths, "sum"), torch.tensor([[[-0.2, -0.3]]]))
    with pytest.raises(ValueError, match="absmax"):
        reduce_positions(scores, lengths, "mean")


def test_prompt_relative_positions_start_at_the_first_real_token():
    values = torch.arange(8.0).view(2, 4)  # [batch, seq]
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    torch.testing.assert_close(
        prompt_relative(values, mask), torch.tensor([[2.0, 3.0, 0, 0], [4.0, 5.0, 6.0, 0]])
    )
