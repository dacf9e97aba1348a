"""A model's dimensions from its ``config.json``, read by the family's own adapter (no table in code).

The config is instantiated as the real transformers class on the ``meta`` device (shapes, no memory, no
weights), and the registered adapter reads its layers, heads, experts, shared experts and vocabulary exactly as
it does for attribution. Hub configs come from the local hub cache, or are fetched (a few kB) once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from gated_lpi_exp.adapters import ADAPTERS, FAMILIES
from gated_lpi_exp.bench.costs import ModelDims
from gated_lpi_exp.checkpoints.olmo_native import is_native_olmo, native_olmo_config
from gated_lpi_exp.errors import ConfigurationError


def dims_from_config(config: dict, source: str) -> ModelDims:
    """The dimensions of the model ``config`` (a ``config.json`` as a dict) describes.

    Raises:
        ConfigurationError: the ``model_type`` is not a supported family.
    """
    if is_native_olmo(config):  # OLMo v1's own layout: the dimensions of the class it is converted into
        config = native_olmo_config(config, Path(source)).to_dict()
    model_type = config.get("model_type")
    if model_type not in ADAPTERS:
        raise ConfigurationError(
            f"{source}: model_type {model_type!r} is not a supported family ({', '.join(FAMILIES)})."
        )
    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    adapter = ADAPTERS[model_type](model)
    return ModelDims(
        family=model_type,
        layers=adapter.n_layers,
        hidden=adapter.d_model,
        heads=adapter.n_heads,
        head_dim=adapter.head_dim,
        vocab=adapter.vocab_size,
        width=adapter.expert_width,
        experts=adapter.n_experts,
        top_k=adapter.top_k,
        shared=getattr(adapter, "shared_width", 0),
        params=float(sum(p.numel() for p in model.parameters())),
        source=source,
        config=config,
    )


def hub_config(repo_id: str, revision: str | None = None) -> tuple[dict, str]:
    """``config.json`` of a hub repository: from the local hub cache, else fetched once (then cached).

    Raises:
        ConfigurationError: neither the cache nor the hub has it (names the fix).
    """
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True)
    except Exception:  # not cached yet: one small download
        try:
            path = hf_hub_download(repo_id, "config.json", revision=revision)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot read config.json of {repo_id!r}: not in the hub cache and the hub is unreachable "
                f"({type(exc).__name__}). Fix: fetch it once online (`hf download {repo_id} config.json`), "
                "or plan a local copy with model.kind=local model.source=/path/to/series."
            ) from exc
    return json.loads(Path(path).read_text()), f"{repo_id} config.json"
