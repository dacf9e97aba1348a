"""OLMo v1's native layout (``hf_olmo``) loads as transformers' OlmoForCausalLM, without remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gated_lpi_exp.checkpoints import load_folder_tokenizer, load_model
from gated_lpi_exp.checkpoints.loading import load_checkpoint, load_tokenizer
from gated_lpi_exp.checkpoints.resolve import Checkpoint
from gated_lpi_exp.config import ModelConfig
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.testing import random_olmo, word_tokenizer

VOCAB, EMBEDDING = 90, 97  # OLMo pads its embedding rows beyond the tokenizer's vocabulary


def _native_config(model, **changes) -> dict:
    """``config.json`` as OLMo v1's Hugging Face wrapper writes it (a subset of its fields)."""
    c = model.config
    config = {
        "architectures": ["OLMoForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_olmo.OLMoConfig"},
        "model_type": "hf_olmo",
        "d_model": c.hidden_size,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": None,
        "multi_query_attention": False,
        "n_layers": c.num_hidden_layers,
        "mlp_ratio": 4,
        "mlp_hidden_size": 2 * c.intermediate_size,
        "activation_type": "swiglu",
        "block_type": "sequential",
        "block_group_size": 1,
        "alibi": False,
        "rope": True,
        "rope_theta": 10000,
        "clip_qkv": None,
        "attention_layer_norm": False,
        "layer_norm_type": "default",
        "layer_norm_with_affine": False,
        "layer_norm_eps": 1e-05,
        "include_bias": False,
        "scale_logits": False,
        "vocab_size": VOCAB,
        "embedding_size": EMBEDDING,
        "weight_tying": c.tie_word_embeddings,
        "max_sequence_length": c.max_position_embeddings,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    return {**config, **changes}


def _native_tensors(model) -> dict[str, torch.Tensor]:
    """The weights under OLMo's own names: fused att_proj = [q; k; v], fused ff_proj = [up; gate]."""
    sd = model.state_dict()
    out = {"model.transformer.wte.weight": sd["model.embed_tokens.weight"]}
    for i in range(model.config.num_hidden_layers):
        layer, block = f"model.layers.{i}", f"model.transformer.blocks.{i}"
        qkv = [sd[f"{layer}.self_attn.{p}_proj.weight"] for p in "qkv"]
        out[f"{block}.att_proj.weight"] = torch.cat(qkv)
        out[f"{block}.attn_out.weight"] = sd[f"{layer}.self_attn.o_proj.weight"]
        up, gate = sd[f"{layer}.mlp.up_proj.weight"], sd[f"{layer}.mlp.gate_proj.weight"]
        out[f"{block}.ff_proj.weight"] = torch.cat([up, gate])
        out[f"{block}.ff_out.weight"] = sd[f"{layer}.mlp.down_proj.weight"]
    if not model.config.tie_word_embeddings:
        out["model.transformer.ff_out.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _write_native(folder: Path, model, *, config=None, tensors=None, bin_weights=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or _native_config(model)))
    tensors = _native_tensors(model) if tensors is None else tensors
    if bin_weights:
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture
def dense():
    return random_olmo(vocab_size=EMBEDDING, seed=3)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("bin_weights", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_a_native_folder_loads_back_with_identical_logits(tmp_path, dense, bin_weights):
    """Exact equality: the same weights through the same class in one process compute the same floats."""
    folder = _write_native(tmp_path / "step1000-tokens4B", dense, bin_weights=bin_weights)
    loaded = load_model(folder, attn_implementation="eager")  # as the reference model
    assert type(loaded).__name__ == "OlmoForCausalLM" and loaded.config.model_type == "olmo"
    assert loaded.config.vocab_size == EMBEDDING and not loaded.training
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(loaded, ids), _logits(dense, ids), rtol=0, atol=0)


def test_the_fused_projections_follow_olmos_own_formulas(tmp_path):
    """OLMo computes ``q, k, v = att_proj(h).split(d)`` and ``x, gate = ff_proj(h).chunk(2)``,
    ``ff_out(silu(gate) * x)``; applied here to random native weights, independently of the conversion.
    Tolerance 1e-5: the two sides multiply the same float32 numbers in a different order."""
    model = random_olmo(vocab_size=EMBEDDING, seed=5)
    gen = torch.Generator().manual_seed(1)
    tensors = {k: torch.randn(v.shape, generator=gen) for k, v in _native_tensors(model).items()}
    loaded = load_model(_write_native(tmp_path / "n", model, tensors=tensors))
    h = torch.randn(4, model.config.hidden_size, generator=gen)  # [rows, d]
    block = "model.transformer.blocks.0"
    x, gate = (h @ tensors[f"{block}.ff_proj.weight"].T).chunk(2, dim=-1)  # [rows, d_ff] each
    expected_mlp = (F.silu(gate) * x) @ tensors[f"{block}.ff_out.weight"].T  # [rows, d]
    layer = loaded.model.layers[0]
    with torch.no_grad():
        torch.testing.assert_close(layer.mlp(h), expected_mlp, rtol=1e-5, atol=1e-5)
        q, k, v = (h @ tensors[f"{block}.att_proj.weight"].T).split(model.config.hidden_size, dim=-1)
        attn = layer.self_attn
        for proj, want in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
            torch.testing.assert_close(proj(h), want, rtol=1e-5, atol=1e-5)


def test_tied_embeddings_unembed_with_wte(tmp_path):
    model = random_olmo(vocab_size=EMBEDDING, seed=4, tie_word_embeddings=True)
    loaded = load_model(_write_native(tmp_path / "tied", model), attn_implementation="eager")
    assert loaded.config.tie_word_embeddings
    torch.testing.assert_close(loaded.lm_head.weight, model.model.embed_tokens.weight, rtol=0, atol=0)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)


def test_bfloat16_is_an_explicit_option(tmp_path, dense):
    loaded = load_model(_write_native(tmp_path / "bf16", dense), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16


def _broken(tmp_path, dense, what):
    tensors = _native_tensors(dense)
    config = _native_config(dense)
    if what == "missing_key":
        del tensors["model.transformer.blocks.1.ff_out.weight"]
    elif what == "wrong_shape":
        tensors["model.transformer.blocks.0.att_proj.weight"] = tensors[
            "model.transformer.blocks.0.att_proj.weight"
        ][:-1]
    elif what == "unexpected_key":
        tensors["model.transformer.blocks.0.attn_norm.weight"] = torch.ones(dense.config.hidden_size)
    elif what == "activation":
        config["activation_type"] = "gelu"
    elif what == "affine_norm":
        config["layer_norm_with_affine"] = True
    elif what == "embedding_size":
        config["embedding_size"] = VOCAB - 1
    return _write_native(tmp_path / what, dense, config=config, tensors=tensors)


@pytest.mark.parametrize(
    ("what", "file", "message"),
    [
        ("missing_key", "model.safetensors", r"key 'model\.transformer\.blocks\.1\.ff_out\.weight' is missing"),
        ("wrong_shape", "model.safetensors", r"blocks\.0\.att_proj\.weight' has shape \(95, 32\), expected \(96, 32\)"),
        ("unexpected_key", "model.safetensors", r"unexpected key\(s\) model\.transformer\.blocks\.0\.attn_norm"),
        ("activation", "config.json", r"activation_type='gelu', but OlmoForCausalLM needs activation_type='swiglu'"),
        ("affine_norm", "config.json", r"layer_norm_with_affine=True"),
        ("embedding_size", "config.json", r"embedding_size=89 is smaller than vocab_size=90"),
    ],
)  # fmt: skip
def test_a_bad_native_folder_fails_with_one_error_naming_the_file(tmp_path, dense, what, file, message):
    folder = _broken(tmp_path, dense, what)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(folder)
    assert str(err.value).startswith(str(folder / file)) and "Fix: " in str(err.value)


def test_missing_config_or_weights_name_the_folder(tmp_path, dense):
    with pytest.raises(CheckpointError, match=r"config\.json does not exist"):
        load_model(tmp_path / "empty")
    folder = _write_native(tmp_path / "no_weights", dense)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no weight file"):
        load_model(folder)
    folder = _write_native(tmp_path / "truncated", dense)
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read the weights"):
        load_model(folder)


def test_the_run_loads_a_native_checkpoint_and_its_tokenizer_without_remote_code(tmp_path, dense):
    folder = _write_native(tmp_path / "step2000", dense)
    tok = word_tokenizer(["the", "capital", "of", "France", "is", "Paris"])
    tok.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    # As OLMo v1's repositories save it: a tokenizer class that exists only in their remote code.
    config |= {
        "tokenizer_class": "OLMoTokenizer",
        "auto_map": {"AutoTokenizer": [None, "hf_olmo.OLMoTokenizerFast"]},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = ModelConfig(
        name="olmo",
        family="olmo",
        kind="local",
        source=str(tmp_path),
        device="cpu",
        dtype="float32",
        attn_implementation="eager",
    )
    ckpt = Checkpoint(step=2000, source=str(folder))
    tokenizer = load_tokenizer(cfg, ckpt)
    assert tokenizer("the capital of France").input_ids == tok("the capital of France").input_ids
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert load_folder_tokenizer(folder).get_vocab() == tok.get_vocab()
    ids = torch.tensor([tokenizer("the capital of France is").input_ids])
    torch.testing.assert_close(_logits(load_checkpoint(cfg, ckpt), ids), _logits(dense, ids), rtol=0, atol=0)
