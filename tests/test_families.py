"""Every supported family against the independent brute force of ``tests/brute_force.py``.

Tiny random models of each transformers class (random norm gains and biases, 10x weights), scored in left- and
right-padded batches under both norms, must match the brute force run on each example alone, to 1e-4: the
engine is float32, the brute force float64, and 1e-4 bounds the float32 rounding of log-probabilities of
magnitude ~10 summed over d = 32 terms with room to spare.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brute_force import FIELDS, brute_force

from gated_lpi_exp.adapters import FAMILIES, get_adapter
from gated_lpi_exp.attribution import Projection, capture, final_logits, gated_lpi, predicted_targets
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import AblationConfig, AttributionConfig, DynamicsConfig
from gated_lpi_exp.data import load_relations, select_relations
from gated_lpi_exp.stages.ablation import ablate_checkpoint
from gated_lpi_exp.stages.attribution import attribute_checkpoint, top_units
from gated_lpi_exp.stages.dynamics import compute_dynamics
from gated_lpi_exp.stages.evaluation import evaluate_checkpoint
from gated_lpi_exp.testing import TINY_SHAPES, random_model, word_tokenizer

SEQS = [[5, 9, 13, 4, 22], [7, 3, 31], [11, 12, 40, 41, 8, 60, 2]]


def _pad(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, span], mask[i, span] = torch.tensor(s), 1
    return ids, mask


@pytest.fixture(scope="module", params=sorted(TINY_SHAPES))
def family_case(request):
    """A tiny model of one family, its predicted targets and the brute force of each example."""
    model = random_model(request.param)
    ids, mask = _pad(SEQS, "right")
    targets = predicted_targets(model, ids, mask)
    refs = [brute_force(model, seq, int(targets[b])) for b, seq in enumerate(SEQS)]
    return request.param, model, targets, refs


def test_every_registered_family_has_a_tiny_model():
    assert sorted(TINY_SHAPES) == sorted(FAMILIES)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("norm", ["frozen", "exact"])
def test_engine_matches_the_brute_force(family_case, norm, side):
    family, model, targets, refs = family_case
    ids, mask = _pad(SEQS, side)
    result = gated_lpi(model, ids, mask, targets, norm=norm)
    for b in range(len(SEQS)):
        for name in FIELDS:
            got, want = getattr(result, name)[b], refs[b][norm][name]
            assert got.shape == want.shape, f"{family}/{name}"
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=f"{family}/{norm}/{side}/{name}/{b}")


def test_units_of_a_sublayer_sum_to_its_output(family_case):
    """Σ units = what the sublayer adds to the residual, less the output projection's bias (no unit)."""
    family, model, _, _ = family_case
    adapter = get_adapter(model)
    ids, mask = _pad(SEQS, "left")
    acts = capture(adapter, ids, mask)
    for layer in range(adapter.n_layers):
        raw_a = acts.a_raw[:, layer] if acts.a_raw is not None else None
        attn = adapter.attn_units(layer, acts.z[:, layer], raw_a)
        o_bias = _bias(adapter.o_proj(layer))
        total = attn.coef @ attn.groups[0].block().T + o_bias
        torch.testing.assert_close(
            total, acts.a[:, layer], atol=2e-5, rtol=1e-5, msg=f"{family} attn {layer}"
        )
        routing = acts.routing[:, layer] if acts.routing is not None else None
        raw_f = acts.f_raw[:, layer] if acts.f_raw is not None else None
        ffn = adapter.ffn_units(layer, acts.x_hat[:, layer], routing, raw_f)
        total = torch.zeros_like(acts.f[:, layer])
        for g in ffn.groups:
            rows = g.rows if g.rows is not None else slice(None)
            total[rows] += ffn.coef[rows, g.start : g.start + g.size] @ g.block().T
        down_bias = _bias(getattr(adapter.mlp(layer), "dense_4h_to_h", None))
        torch.testing.assert_close(
            total + down_bias, acts.f[:, layer], atol=2e-5, rtol=1e-5, msg=f"{family} ffn {layer}"
        )


def _bias(module) -> torch.Tensor | float:
    bias = getattr(module, "bias", None)
    return bias.detach().float() if bias is not None else 0.0


@pytest.mark.parametrize("norm", ["frozen", "exact"])
def test_phi_of_the_final_state_is_the_models_logits(family_case, norm):
    family, model, _, _ = family_case
    adapter = get_adapter(model)
    ids, mask = _pad(SEQS, "left")
    acts = capture(adapter, ids, mask)
    logits = final_logits(model, ids, mask)  # [batch, V]
    targets = logits.argmax(-1)
    phi = Projection(adapter, acts.h_final, targets, norm).logits(acts.h_final)
    torch.testing.assert_close(phi, logits, atol=1e-5, rtol=1e-5, msg=family)
    result = gated_lpi(model, ids, mask, targets, norm=norm)
    model_lp = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.base_logprob, model_lp, atol=1e-5, rtol=0, msg=family)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_runs_on_every_family(family):
    """HIT@k, attribution aggregates, top units, the dynamics metrics and both ablations, on two checkpoints."""
    samples = select_relations(load_relations("bundled"), names=["country_capital_city", "adjective_antonym"])
    samples = samples.groupby("relation", sort=False).head(4).reset_index(drop=True)
    words = sorted({w for t in samples["prompt"].tolist() + samples["object"].tolist() for w in t.split()})
    tok = word_tokenizer(words)
    aggregates = []
    for step, seed in ((0, 0), (10, 1)):
        model = random_model(family, vocab_size=len(tok), seed=seed)
        hits = evaluate_checkpoint(model, tok, samples, step=step, batch_size=3)
        prompt = tok(samples["prompt"].iloc[0], return_tensors="pt").input_ids
        with torch.no_grad():
            alone = model(input_ids=prompt).logits[0, -1]
        gold = int(hits["target_id"].iloc[0])
        assert hits["gold_rank"].iloc[0] == 1 + int((alone > alone[gold]).sum())
        outcome = attribute_checkpoint(
            model, tok, samples, Checkpoint(step, family), AttributionConfig(batch_size=3, use_cache=False)
        )
        aggregates.append(outcome.aggregate)
        top = top_units(outcome.aggregate, model, 5)
        adapter = get_adapter(model)
        ffn = top[top["kind"] == "ffn"]
        assert (ffn["expert"] < (adapter.n_experts + 1 if adapter.is_moe else 0)).all()
        for name, unit, count in (("top1pct_ffn", "ffn_neuron", 0), ("top1_head", "head", 1)):
            cfg = AblationConfig(name=name, unit=unit, count=count, fraction=0.01, random_seeds=1)
            table = ablate_checkpoint(model, tok, samples, hits, outcome.aggregate, outcome.sums, cfg)
            assert set(table["condition"]) == {"base", "targeted", "random"}
    summary = compute_dynamics(aggregates, DynamicsConfig())["dynamics_summary"]
    assert np.isfinite(summary.loc[summary["metric"] == "j_stab", "value"]).all()
