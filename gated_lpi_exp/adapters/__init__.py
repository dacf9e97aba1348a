"""Model-family adapters: one file per family, registered here by the ``model_type`` values each serves.

``ADAPTER_CLASSES`` is the one list of supported families: config validation, the checkpoint loader's
``model_type`` check, the cost planner and the docs all read ``FAMILIES`` from it.
"""

from __future__ import annotations

import inspect

from torch import nn

from gated_lpi_exp.adapters.base import FFNNeurons, ModelAdapter, NeuronGroup, NormSpec, WeightSlice
from gated_lpi_exp.adapters.deepseek_v3 import DeepseekV3Adapter
from gated_lpi_exp.adapters.gpt_neox import GPTNeoXAdapter
from gated_lpi_exp.adapters.llama import LlamaAdapter
from gated_lpi_exp.adapters.mixtral import MixtralAdapter
from gated_lpi_exp.adapters.olmo import OlmoAdapter
from gated_lpi_exp.adapters.olmo2 import Olmo2Adapter
from gated_lpi_exp.adapters.olmoe import OlmoeAdapter
from gated_lpi_exp.adapters.qwen2_moe import Qwen2MoeAdapter
from gated_lpi_exp.adapters.qwen3_moe import Qwen3MoeAdapter
from gated_lpi_exp.errors import AttributionError

ADAPTER_CLASSES: tuple[type[ModelAdapter], ...] = (
    OlmoeAdapter,
    OlmoAdapter,
    LlamaAdapter,
    Olmo2Adapter,
    GPTNeoXAdapter,
    MixtralAdapter,
    Qwen2MoeAdapter,
    Qwen3MoeAdapter,
    DeepseekV3Adapter,
)


def build_registry(classes: tuple[type[ModelAdapter], ...]) -> dict[str, type[ModelAdapter]]:
    """``model_type -> adapter class``; fails at import on an incomplete adapter or a claimed-twice type.

    Raises:
        TypeError: An adapter leaves an abstract method unimplemented, serves no ``model_type``, or claims
            one another adapter already serves.
    """
    registry: dict[str, type[ModelAdapter]] = {}
    for cls in classes:
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise TypeError(f"{cls.__name__} does not implement {missing}; see docs/attribution.md")
        if not cls.model_types:
            raise TypeError(f"{cls.__name__} lists no model_types")
        for model_type in cls.model_types:
            if model_type in registry:
                raise TypeError(
                    f"model_type {model_type!r} claimed by {registry[model_type].__name__} and {cls.__name__}"
                )
            registry[model_type] = cls
    return registry


ADAPTERS = build_registry(ADAPTER_CLASSES)
FAMILIES: tuple[str, ...] = tuple(sorted(ADAPTERS))
"""Every supported ``model_type`` (= ``model.family``)."""
MOE_FAMILIES: tuple[str, ...] = tuple(sorted(t for t, cls in ADAPTERS.items() if cls.is_moe))


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type``.

    Args:
        model: A causal LM with a ``config`` (e.g. ``OlmoeForCausalLM``, ``LlamaForCausalLM``).

    Returns:
        The family's ``ModelAdapter`` wrapping ``model``.

    Raises:
        AttributionError: The architecture is not supported, or its shapes do not fit.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter_cls = ADAPTERS.get(model_type)
    if adapter_cls is None:
        raise AttributionError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); supported families: "
            f"{', '.join(FAMILIES)}. See 'Adding a model family' in docs/attribution.md"
        )
    adapter = adapter_cls(model)
    adapter.check()
    return adapter


__all__ = [
    "ADAPTERS",
    "ADAPTER_CLASSES",
    "FAMILIES",
    "MOE_FAMILIES",
    "DeepseekV3Adapter",
    "FFNNeurons",
    "GPTNeoXAdapter",
    "LlamaAdapter",
    "MixtralAdapter",
    "ModelAdapter",
    "NeuronGroup",
    "NormSpec",
    "Olmo2Adapter",
    "OlmoAdapter",
    "OlmoeAdapter",
    "Qwen2MoeAdapter",
    "Qwen3MoeAdapter",
    "WeightSlice",
    "build_registry",
    "get_adapter",
]
