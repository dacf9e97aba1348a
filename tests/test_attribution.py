"""Gated-LPI engine invariances (batching, padding, memory budget, dtype), targets and positions.

Every family's brute-force proof is in ``test_families.py``. The formula-level brute force below hooks a
bf16 OLMo/OLMoE model's own activations and materialises each contribution vector ``c_v`` from the
definitions, so the bf16 test can compare the engine on identical (bf16-rounded) activations.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from gated_lpi_exp.adapters import FAMILIES, get_adapter
from gated_lpi_exp.attribution import (
    capture,
    chunk_size,
    gated_lpi,
    gold_targets,
    last_token_positions,
    position_ids_from_mask,
    predicted_targets,
)
from gated_lpi_exp.attribution.projection import WORKING_COPIES
from gated_lpi_exp.errors import AttributionError
from gated_lpi_exp.testing import random_model, random_olmo, random_olmoe, word_tokenizer

SEQS = [[5, 9, 13, 4, 22], [7, 3, 31], [11, 12, 40, 41, 8, 60, 2]]
FIELDS = ("ffn", "attn", "heads", "ffn_layer", "attn_layer")


def _pad(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, span], mask[i, span] = torch.tensor(s), 1
    return ids, mask


def _record(model, ids: torch.Tensor) -> dict:
    """Activations of one unpadded example at its last position, via hooks written for this test."""
    rec: dict = {"r_in": [], "z": [], "a": [], "r_mid": [], "x_hat": [], "f": [], "h_L": []}

    def keep(input_site: str | None, output_site: str | None):
        def hook(module, args, out=None) -> None:  # returns None so the model's values are untouched
            if input_site:
                rec[input_site].append(args[0][0, -1])
            if output_site:
                rec[output_site].append(out[0, -1])

        return hook

    handles = []
    for layer in model.model.layers:
        handles.append(layer.register_forward_pre_hook(keep("r_in", None)))
        handles.append(layer.self_attn.o_proj.register_forward_hook(keep("z", "a")))
        handles.append(layer.post_attention_layernorm.register_forward_hook(keep("r_mid", "x_hat")))
        handles.append(layer.mlp.register_forward_hook(keep(None, "f")))
    handles.append(model.model.norm.register_forward_pre_hook(keep("h_L", None)))
    with torch.no_grad():
        rec["logits"] = model(input_ids=ids).logits[0, -1]
    for h in handles:
        h.remove()
    rec["h_L"] = rec["h_L"][0]
    return {k: (torch.stack(v) if isinstance(v, list) else v).float() for k, v in rec.items()}


def _ffn_contributions(layer, x_hat: torch.Tensor, n_neurons: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every FFN/expert neuron's contribution vector ``[N, d]`` and whether it is routed ``[N]``."""
    mlp = layer.mlp
    if hasattr(mlp, "experts"):
        _, weights, index = copy.deepcopy(mlp.gate).float()(
            x_hat[None]
        )  # float32 router, as the definitions say
        ex = mlp.experts
        width = ex.down_proj.shape[2]
        vecs = torch.zeros(n_neurons, x_hat.shape[0])
        routed = torch.zeros(n_neurons, dtype=torch.bool)
        for g, e in zip(weights[0].tolist(), index[0].tolist(), strict=True):
            gate, up = (ex.gate_up_proj[e].float() @ x_hat).chunk(2)
            m = ex.act_fn(gate) * up
            vecs[e * width : (e + 1) * width] = (ex.down_proj[e].float() * (g * m)).T
            routed[e * width : (e + 1) * width] = True
        return vecs, routed
    m = mlp.act_fn(x_hat @ mlp.gate_proj.weight.float().T) * (x_hat @ mlp.up_proj.weight.float().T)
    return (mlp.down_proj.weight.float() * m).T, torch.ones(n_neurons, dtype=torch.bool)


def brute_force(model, seq: list[int], target: int, norm: str) -> dict[str, torch.Tensor]:
    """The score table of docs/definitions.md for one example, one contribution vector at a time."""
    acts = _record(model, torch.tensor([seq]))
    # float32 copies of the real modules: the model's dtype must not leak into the reference math.
    final_norm, lm_head = copy.deepcopy(model.model.norm).float(), copy.deepcopy(model.lm_head).float()
    h_l = acts["h_L"]

    def logp(u: torch.Tensor) -> torch.Tensor:  # [n, d] -> [n]
        if norm == "exact":
            logits = lm_head(final_norm(u))
        elif hasattr(final_norm, "weight"):  # RMSNorm with gain (OLMoE)
            s = torch.sqrt(h_l.pow(2).mean() + final_norm.variance_epsilon)
            logits = lm_head(final_norm.weight * u / s)
        else:  # parameter-free LayerNorm (OLMo)
            s = torch.sqrt(h_l.var(unbiased=False) + 1e-5)
            logits = lm_head((u - u.mean(-1, keepdim=True)) / s)
        return torch.log_softmax(logits, dim=-1)[:, target]

    out = {k: [] for k in FIELDS}
    n_heads = model.config.num_attention_heads
    for i, layer in enumerate(model.model.layers):
        base, z, w_o = acts["r_in"][i], acts["z"][i], layer.self_attn.o_proj.weight.float()
        head_dim = z.shape[0] // n_heads
        ref = logp(base[None])
        out["attn"].append(logp(base + (w_o * z).T) - ref)
        heads = [
            w_o[:, h * head_dim : (h + 1) * head_dim] @ z[h * head_dim : (h + 1) * head_dim]
            for h in range(n_heads)
        ]
        out["heads"].append(logp(base + torch.stack(heads)) - ref)
        out["attn_layer"].append(logp(base[None] + acts["a"][i]) - ref)
        base = acts["r_mid"][i]
        ref = logp(base[None])
        n_ffn = get_adapter(model).ffn_neurons
        vecs, routed = _ffn_contributions(layer, acts["x_hat"][i], n_ffn)
        out["ffn"].append(torch.where(routed, logp(base + vecs) - ref, 0.0))
        out["ffn_layer"].append(logp(base[None] + acts["f"][i]) - ref)
    return {k: torch.stack(v).squeeze(-1) for k, v in out.items()}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("norm", ["frozen", "exact"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batching_and_padding_invariance(family, norm, side):
    model = random_model(family)
    ids, mask = _pad(SEQS, side)
    targets = torch.tensor([3, 17, 50])
    batched = gated_lpi(model, ids, mask, targets, norm=norm)
    for b, seq in enumerate(SEQS):
        alone = gated_lpi(
            model,
            torch.tensor([seq]),
            torch.ones(1, len(seq), dtype=torch.long),
            targets[b : b + 1],
            norm=norm,
        )
        for name in (*FIELDS, "base_logprob"):
            torch.testing.assert_close(getattr(batched, name)[b], getattr(alone, name)[0], atol=1e-5, rtol=0)


def test_unrouted_experts_score_exactly_zero(tiny_olmoe):
    ids, mask = _pad(SEQS, "left")
    result = gated_lpi(tiny_olmoe, ids, mask, torch.tensor([3, 17, 50]))
    adapter = get_adapter(tiny_olmoe)
    batch, layers = result.ffn.shape[:2]
    per_expert = result.ffn.reshape(batch, layers, adapter.n_experts, adapter.expert_width)
    assert result.routed.shape == (batch, layers, adapter.n_experts)
    assert (result.routed.sum(-1) == adapter.top_k).all()
    assert (per_expert[~result.routed] == 0).all()
    nonzero_capable = result.routed.sum(-1) * adapter.expert_width
    assert (nonzero_capable == adapter.top_k * adapter.expert_width).all()
    assert ((per_expert != 0).sum((-1, -2)) <= nonzero_capable).all()
    assert (per_expert[result.routed] != 0).float().mean() > 0.9


def _router_choice(model, seq: list[int]) -> list[tuple[set[int], torch.Tensor]]:
    """Per layer: the experts the model's own router picks at the last position, and its float32 logits."""
    adapter = get_adapter(model)
    acts = capture(adapter, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
    out = []
    for layer in range(adapter.n_layers):
        router = adapter.router(layer)
        logits = acts.x_hat[0, layer] @ router.weight.float().T  # [experts]
        out.append(({int(e) for e in acts.routing[0, layer]}, logits))
    return out


@pytest.mark.parametrize("make", [random_olmoe, random_olmo])
def test_bf16_model_scored_in_float32(make):
    """On a bf16 model the math still runs in float32.

    Against the brute force on the same bf16 model's activations the engine agrees to 1e-4 (both are float32
    math on identical inputs). Against a float32 forward of the same (bf16-representable) weights the
    activations differ by bf16 rounding: every layer's output is rounded to 8 significant bits, which on these
    random 10x-scaled models moves log-probabilities by up to ~3e-2, hence the 5e-2 tolerance there. That
    tolerance applies to every unit alike, so a neuron scoring exactly 0 in one run and ~1e-7 in the other
    is no failure.

    Routing (MoE only) is compared as the set of experts each router picks at the last position, read from
    the routers themselves: the engine must report exactly its own model's choice, and the bf16 and float32
    models may choose differently only where rounding explains it: if the float32 router ranks expert b over
    a and the bf16 one a over b, then ``l_b - l_a < 2 max|Δl|`` over the two (Δl: how far bf16 moved each
    router logit). FFN scores are compared across dtypes only in layers whose routing agrees, since
    elsewhere different experts ran.
    """
    model = make().to(torch.bfloat16)
    reference = copy.deepcopy(model).float()
    adapter = get_adapter(model)
    ids, mask = _pad(SEQS, "right")
    targets = predicted_targets(reference, ids, mask)
    results = {norm: gated_lpi(model, ids, mask, targets, norm=norm) for norm in ("frozen", "exact")}
    for b, seq in enumerate(SEQS):
        same_routing = torch.ones(adapter.n_layers, dtype=torch.bool)  # [layers]
        if adapter.is_moe:
            bf16_choice, f32_choice = _router_choice(model, seq), _router_choice(reference, seq)
            engine_choice = [
                set(results["frozen"].routed[b, layer].nonzero()[:, 0].tolist())
                for layer in range(adapter.n_layers)
            ]
            assert engine_choice == [experts for experts, _ in bf16_choice], "engine routing != the router's"
            for layer, (bf16, f32) in enumerate(zip(bf16_choice, f32_choice, strict=True)):
                swapped = sorted(bf16[0] ^ f32[0])
                if swapped:
                    same_routing[layer] = False
                    gap = float(f32[1][swapped].max() - f32[1][swapped].min())
                    moved = float((bf16[1] - f32[1])[swapped].abs().max())
                    assert gap <= 2 * moved, f"example {b} layer {layer}: routing changed beyond rounding"
        for norm, result in results.items():
            same_acts = brute_force(model, seq, int(targets[b]), norm)
            float_run = brute_force(reference, seq, int(targets[b]), norm)
            for name in FIELDS:
                got = getattr(result, name)[b]
                assert got.dtype == torch.float32 and torch.isfinite(got).all()
                torch.testing.assert_close(got, same_acts[name], atol=1e-4, rtol=0, msg=f"{norm}/{name}/{b}")
                layers = same_routing if name == "ffn" else torch.ones_like(same_routing)
                torch.testing.assert_close(
                    got[layers], float_run[name][layers], atol=5e-2, rtol=0, msg=f"{norm}/{name}/{b}"
                )


def test_memory_budget_only_changes_chunking(tiny_olmoe):
    ids, mask = _pad(SEQS, "right")
    targets = torch.tensor([3, 17, 50])
    for norm in ("frozen", "exact"):
        small = gated_lpi(tiny_olmoe, ids, mask, targets, norm=norm, memory_budget_mb=0.01)
        large = gated_lpi(tiny_olmoe, ids, mask, targets, norm=norm, memory_budget_mb=4096)
        for name in FIELDS:
            torch.testing.assert_close(getattr(small, name), getattr(large, name), atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget_mb", [0.5, 1, 64, 512, 4096])
@pytest.mark.parametrize("rows", [1, 8, 64])
def test_chunk_size_fits_budget(budget_mb, rows):
    vocab = 50304
    chunk = chunk_size(budget_mb, rows, vocab)
    assert chunk >= 1
    if WORKING_COPIES * rows * vocab * 4 <= budget_mb * 2**20:  # one neuron fits, so the chunk must too
        assert rows * chunk * vocab * 4 * WORKING_COPIES <= budget_mb * 2**20
        assert rows * (chunk + 1) * vocab * 4 * WORKING_COPIES > budget_mb * 2**20


def test_unsupported_architecture_fails_clearly():
    small = dict(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = GPT2LMHeadModel(GPT2Config(**small))
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(AttributionError, match="unsupported architecture 'gpt2'.*gpt_neox, llama"):
        gated_lpi(model, ids, torch.ones_like(ids), torch.tensor([1]))


def test_invalid_norm_mode(tiny_olmo):
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(AttributionError, match="norm"):
        gated_lpi(tiny_olmo, ids, torch.ones_like(ids), torch.tensor([1]), norm="approximate")


def test_positions_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = right.flip(1)
    assert last_token_positions(right).tolist() == [2, 3, 0]
    assert last_token_positions(left).tolist() == [3, 3, 3]
    assert position_ids_from_mask(left)[0].tolist() == [0, 0, 1, 2]
    assert position_ids_from_mask(right)[0].tolist() == [0, 1, 2, 2]


def test_predicted_targets_are_model_top1(tiny_olmo):
    ids, mask = _pad(SEQS, "left")
    predicted = predicted_targets(tiny_olmo, ids, mask)
    for b, seq in enumerate(SEQS):
        with torch.no_grad():
            assert predicted[b] == tiny_olmo(input_ids=torch.tensor([seq])).logits[0, -1].argmax()


def test_gold_targets_first_object_token():
    tok = word_tokenizer(["the", "capital", "of", "france", "is", "paris", "city"])
    got = gold_targets(tok, ["the capital of france is", "france is"], ["paris city", "paris"])
    assert got.tolist() == [tok.convert_tokens_to_ids("paris")] * 2


def test_gold_targets_falls_back_when_prompt_is_not_a_prefix():
    # A real BPE whose merge "a " crosses the prompt/object boundary, so the prompt ids are no prefix.
    vocab = {"a": 0, "b": 1, " ": 2, "a ": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("a", " ")])))
    with pytest.warns(UserWarning, match="not a prefix"):
        got = gold_targets(tok, ["a"], ["b"])
    assert got.tolist() == [vocab[" "]]


@pytest.mark.requires_gpu
@pytest.mark.parametrize("norm", ["frozen", "exact"])
@pytest.mark.parametrize("make", [random_olmoe, random_olmo])
def test_cuda_matches_cpu(make, norm):
    model = make()
    ids, mask = _pad(SEQS, "left")
    targets = torch.tensor([3, 17, 50])
    cpu = gated_lpi(model, ids, mask, targets, norm=norm)
    gpu = gated_lpi(model.cuda(), ids.cuda(), mask.cuda(), targets.cuda(), norm=norm).to_cpu()
    for name in (*FIELDS, "base_logprob"):
        torch.testing.assert_close(getattr(gpu, name), getattr(cpu, name), atol=1e-4, rtol=0)
