"""Model-family adapters: one file per family, registered here by the config's ``model_type``."""

from __future__ import annotations

from torch import nn

from gated_lpi_exp.adapters.base import FFNNeurons, ModelAdapter, NeuronGroup, NormSpec, WeightSlice
from gated_lpi_exp.adapters.olmo import OlmoAdapter
from gated_lpi_exp.adapters.olmoe import OlmoeAdapter
from gated_lpi_exp.errors import AttributionError

# model_type -> adapter class. Only pre-norm models whose norms sit in front of attention/MLP fit the
# residual decomposition; OLMo2 (norms after the block outputs) and others are rejected on purpose.
ADAPTERS: dict[str, type[ModelAdapter]] = {
    "olmoe": OlmoeAdapter,
    "olmo": OlmoAdapter,
}


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by ``model.config.model_type``.

    Args:
        model: A causal LM with a ``config`` (e.g. ``OlmoeForCausalLM``, ``OlmoForCausalLM``).

    Returns:
        The family's ``ModelAdapter`` wrapping ``model``.

    Raises:
        AttributionError: The architecture is not supported.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise AttributionError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); supported families: "
            f"{', '.join(sorted(ADAPTERS))}. Gated-LPI needs a pre-norm residual decomposition "
            "(OLMo2-style post-block norms do not fit); see docs/attribution.md to add a family"
        )
    return adapter(model)


__all__ = [
    "ADAPTERS",
    "FFNNeurons",
    "ModelAdapter",
    "NeuronGroup",
    "NormSpec",
    "OlmoAdapter",
    "OlmoeAdapter",
    "WeightSlice",
    "get_adapter",
]
