"""Load one checkpoint folder, in the transformers layout or OLMo v1's native layout, as a transformers model.

Example:
    >>> from gated_lpi_exp.checkpoints import load_model
    >>> model = load_model("/data/OLMo-7B/step10000-tokens44B")  # native hf_olmo -> OlmoForCausalLM

Weights are read from safetensors files. The OLMo v1 repositories publish most training branches only as
``pytorch_model.bin``; those are read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only and refuses anything that could run code. A transformers-layout folder must have
safetensors weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    OlmoForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from gated_lpi_exp.checkpoints.olmo_native import is_native_olmo, native_olmo_config, native_olmo_state_dict
from gated_lpi_exp.errors import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype`` values; ``auto`` keeps the dtype the weights were saved in."""
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict.

    Raises:
        CheckpointError: it is missing or not a JSON object.
    """
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist: a checkpoint folder needs its config.json. Fix: copy or download the "
            "whole checkpoint folder."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}). Fix: download it again.") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(config).__name__}.")
    return config


def checkpoint_model_type(folder: str | Path) -> str | None:
    """The model type a folder loads as: its ``config.json`` ``model_type``, or ``olmo`` for OLMo v1's native
    layout (converted into ``OlmoForCausalLM``).

    Raises:
        CheckpointError: ``config.json`` is missing or not a JSON object.
    """
    config = read_config(folder)
    return "olmo" if is_native_olmo(config) else config.get("model_type")


def load_model(
    folder: str | Path,
    dtype: str = "float32",
    *,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a checkpoint folder as a transformers causal LM in eval mode, on the CPU.

    Args:
        folder: A folder in the transformers layout (``config.json`` + ``*.safetensors``) or in OLMo v1's
            native layout (``model_type`` ``hf_olmo``; converted into ``OlmoForCausalLM``, see
            :mod:`gated_lpi_exp.checkpoints.olmo_native`).
        dtype: ``float32`` (the paper's choice), ``bfloat16``, ``float16`` or ``auto`` (as saved).
        attn_implementation: ``sdpa`` or ``eager``.
        trust_remote_code: For transformers-layout folders only: run code shipped with the checkpoint.

    Raises:
        CheckpointError: naming the file: a missing or damaged config or weight file, a native checkpoint
            this conversion does not support, or pickle-only weights in the transformers layout.
    """
    folder = Path(folder)
    config = read_config(folder)
    net: PreTrainedModel
    if is_native_olmo(config):
        olmo_config = native_olmo_config(config, folder / "config.json")
        tensors, where = read_weights(folder, weights_only_bin=True)
        state = native_olmo_state_dict(tensors, olmo_config, where)
        net = OlmoForCausalLM.from_pretrained(
            None,
            config=olmo_config,
            state_dict=state,
            dtype=DTYPES.get(dtype, torch.float32),
            attn_implementation=attn_implementation,
        )
    else:
        require_safetensors(folder)
        net = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=DTYPES.get(dtype, "auto"),
            use_safetensors=True,  # never unpickle weights
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            local_files_only=True,  # a folder: no request to the hub
        )
    return net.eval()


def load_folder_tokenizer(folder: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a checkpoint folder (an OLMo v1 native folder: from its ``tokenizer.json``,
    without the repository's tokenizer class), with a pad token (the EOS token when it has none)."""
    folder = Path(folder)
    tok: PreTrainedTokenizerBase
    if (folder / "config.json").is_file() and is_native_olmo(
        read_config(folder)
    ):  # a tokenizer alone: no config
        tok = _native_tokenizer(folder)
    else:
        tok = AutoTokenizer.from_pretrained(
            folder, trust_remote_code=trust_remote_code, local_files_only=True
        )  # a folder: no request to the hub (e.g. for chat templates)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def read_weights(folder: Path, *, weights_only_bin: bool) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the folder's weight files (safetensors first; ``*.bin`` through
    ``torch.load(weights_only=True)`` when ``weights_only_bin``), and the file(s) they came from.

    Raises:
        CheckpointError: no weight file, or one that cannot be read (named).
    """
    files = _weight_files(folder, "model.safetensors", "model*.safetensors")
    if not files and weights_only_bin:
        files = _weight_files(folder, "pytorch_model.bin", "pytorch_model*.bin")
    if not files:
        kinds = "model.safetensors or pytorch_model.bin" if weights_only_bin else "*.safetensors"
        raise CheckpointError(f"{folder} holds no weight file ({kinds}). Fix: copy or download the weights.")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(path) if path.suffix == ".safetensors" else _load_bin(path))
        except Exception as exc:  # truncated or damaged files surface as many exception types
            raise CheckpointError(
                f"{path}: cannot read the weights ({type(exc).__name__}: {exc}). Fix: download it again."
            ) from exc
    names = files[0].name if len(files) == 1 else f"{files[0].name} ... {files[-1].name}"
    return tensors, f"{folder}/{names}"


def require_safetensors(folder: Path) -> None:
    """Refuse a transformers-layout folder whose weights are only pickle files (``pytorch_model.bin``).

    Raises:
        CheckpointError: the folder has pickle weights and no safetensors weights.
    """
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(
            f"{folder} has only pickle-format weights ({', '.join(pickles)}); this tool loads safetensors "
            "weights only, because unpickling a file can run arbitrary code. Fix: convert it once, in an "
            f"environment you trust, with AutoModelForCausalLM.from_pretrained('{folder}')"
            f".save_pretrained('{folder}', safe_serialization=True)."
        )


def _weight_files(folder: Path, single: str, pattern: str) -> list[Path]:
    if (folder / single).is_file():
        return [folder / single]
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def _native_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{folder / 'tokenizer.json'} does not exist. Fix: download the tokenizer files."
        )
    special: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            doc = json.loads(path.read_text(encoding="utf-8"))
            for key in _SPECIAL_TOKENS:
                value = doc.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    special[key] = value
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)
