"""Explain a failed attribution: where the non-finite values come from (weights, then the first layer)."""

from __future__ import annotations

import re

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gated_lpi_exp.attribution.targets import position_ids_from_mask
from gated_lpi_exp.data.batches import prompt_batches
from gated_lpi_exp.errors import AttributionError, NonFiniteError

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def non_finite_weights(model: PreTrainedModel) -> list[str]:
    """Names of the parameters that hold NaN or Inf."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


@torch.no_grad()
def first_non_finite_layer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame, batch_size: int
) -> int | None:
    """The first decoder layer whose output is NaN/Inf at a real token of some prompt (-1: the embeddings),
    or None when every hidden state is finite."""
    device = next(model.parameters()).device
    for batch in prompt_batches(tokenizer, samples, batch_size, device):
        mask = batch.attention_mask
        out = model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
            output_hidden_states=True,
        )
        for i, hidden in enumerate(out.hidden_states):  # [batch, seq, d]; 0 = embeddings
            if not bool(torch.isfinite(hidden[mask.bool()]).all()):
                return i - 1  # hidden_states[i] is the output of layer i - 1
    return None


def explain(
    exc: AttributionError,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    step: int,
    batch_size: int,
) -> AttributionError:
    """``exc`` restated with the checkpoint and, for non-finite values, the layer they start at and why."""
    weights = non_finite_weights(model)
    layer = first_non_finite_layer(model, tokenizer, samples, batch_size)
    if not weights and layer is None:
        return AttributionError(f"Attribution failed at checkpoint step {step}: {exc}")
    where = "the embeddings" if layer == -1 else f"layer {layer}" if layer is not None else "the scores"
    if weights:
        layers = sorted({int(m.group(1)) for w in weights if (m := _LAYER.search(w))})
        cause = (
            f"the checkpoint's weights hold NaN/Inf ({', '.join(weights[:3])}"
            f"{', ...' if len(weights) > 3 else ''}; layer {', '.join(map(str, layers)) or '-'}). "
            "Fix: replace the damaged checkpoint files and run again (finished checkpoints are kept)."
        )
    else:
        cause = (
            "its weights are finite, so the activations overflowed: use model.dtype=float32 (or bfloat16)."
        )
    what = "model outputs" if isinstance(exc, NonFiniteError) else "Gated-LPI scores"
    return AttributionError(
        f"Non-finite {what} at checkpoint step {step}: values first become NaN/Inf at {where} "
        f"({exc}); {cause}"
    )
