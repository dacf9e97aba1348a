"""Score exactly as the paper's released notebooks do, flaws included, inside one ``with`` block.

The released code (the two notebooks and the patched OLMoE / OLMo modeling files for transformers 4.46.3)
differs from this project's default in three ways that change numbers:

- **No causal mask.** The patched decoder layers always run their own eager attention, but the notebooks load
  the model with transformers' default ``sdpa`` implementation, whose mask code returns *no* mask for an
  unpadded prompt (it leaves causality to SDPA's ``is_causal`` flag, which the eager code never reads). Every
  position therefore attends to every position of the prompt, later ones included: the model is not a causal
  language model while it is scored.
- **The final norm's ε is 1e-6 in φ** (hard-coded in the notebooks' projection), whatever the model's own.
- **Attention neurons per source position**: one unit per (layer, head, dimension, position of the prompt).

:func:`released_code` reproduces the first two for every forward pass and score of the project (predicted
targets, ``gated_lpi``, HIT@k, ablations) and makes the third the engine's default. Padding is the one thing
the notebooks never meet (they score one prompt at a time): here every position attends to the prompt's
non-padding positions only, so a padded example scores as it does alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from gated_lpi_exp.adapters import get_adapter
from gated_lpi_exp.compat.state import ScoringMode, activate, active_mode, deactivate
from gated_lpi_exp.errors import AttributionError

RELEASED_FAMILIES = ("olmoe", "olmo")
"""The model families the released code was written for."""
RELEASED_FINAL_NORM_EPS = 1e-6
"""The ε the released notebooks add to the final norm's mean square in φ."""
MASKABLE_ATTENTION = ("eager", "sdpa")
"""Attention implementations that accept the 4D additive mask this mode passes."""
RELEASED_CODE = ScoringMode(name="released_code", final_norm_eps=RELEASED_FINAL_NORM_EPS, attn_positions=True)
DESCRIPTION = (
    "scores reproduce the paper's released notebooks, not a causal language model: every position attends to "
    "every non-padding position of its prompt, later ones included (no causal mask); the final norm's epsilon "
    f"in the projection is {RELEASED_FINAL_NORM_EPS:g}; attention neurons are scored per source position"
)
"""What ``attribution.compat=released_code`` means, in plain words (run params and report)."""


@contextmanager
def released_code(model: nn.Module) -> Iterator[nn.Module]:
    """Make every forward pass and score of ``model`` reproduce the paper's released code.

    Inside the block: attention runs over the prompt's non-padding positions without the causal mask, φ uses
    the final norm with ε = 1e-6, and ``gated_lpi`` scores attention neurons per source position unless told
    otherwise (``attn_positions=False``). Outside it nothing changes: the hook is removed and the mode
    unregistered on exit, also when the body raises.

    Args:
        model: An OLMoE or OLMo causal LM with ``eager`` or ``sdpa`` attention.

    Yields:
        The same model.

    Raises:
        AttributionError: Another family, an attention implementation that takes no 4D mask (flash
            attention), or the mode already active on this model.
    """
    adapter = get_adapter(model)
    if adapter.family not in RELEASED_FAMILIES:
        raise AttributionError(
            f"the released code covers {', '.join(RELEASED_FAMILIES)} only, not {adapter.family!r}. "
            "Fix: drop attribution.compat for this model."
        )
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in MASKABLE_ATTENTION:
        raise AttributionError(
            f"released-code mode needs eager or sdpa attention to drop the causal mask; the model uses "
            f"{implementation!r}. Fix: load it with attn_implementation='sdpa' (model.attn_implementation)."
        )
    if active_mode(model) is not None:
        raise AttributionError("released-code mode is already active on this model; do not nest it")
    handle = adapter.backbone().register_forward_pre_hook(_bidirectional_mask, with_kwargs=True)
    activate(model, RELEASED_CODE)
    try:
        yield model
    finally:
        handle.remove()
        deactivate(model)


def _bidirectional_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace the backbone's 2D padding mask with a 4D one that lets every position see every real token.

    transformers returns a 4D mask unchanged from its mask builders, and eager and SDPA attention add it to
    the attention scores; with a mask given, SDPA does not apply its own causal flag either.
    """
    positional, kwargs = list(args), dict(kwargs)
    in_args = "attention_mask" not in kwargs and len(positional) > 1
    mask = positional[1] if in_args else kwargs.get("attention_mask")
    inputs = kwargs.get("input_ids")
    if inputs is None:
        inputs = positional[0] if positional else kwargs["inputs_embeds"]
    if mask is None:
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    if mask.dim() != 2:
        raise AttributionError(
            f"released-code mode builds its own attention mask from a [batch, seq] padding mask; got a "
            f"{mask.dim()}D mask. Fix: pass the tokenizer's 2D attention_mask."
        )
    dtype = next(module.parameters()).dtype
    full = key_padding_mask(mask, dtype if dtype.is_floating_point else torch.float32)
    if in_args:
        positional[1] = full
    else:
        kwargs["attention_mask"] = full
    return tuple(positional), kwargs


def key_padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``[batch, 1, seq, seq]`` mask: 0 where the key is a real token, the dtype's minimum elsewhere.

    Every query row (padding rows too) sees every real token of its prompt, so no row is fully masked.

    Args:
        attention_mask: ``[batch, seq]`` 1 for tokens, 0 for padding.
        dtype: The attention scores' dtype.

    Returns:
        The mask, on ``attention_mask``'s device.
    """
    batch, seq = attention_mask.shape
    blocked = ~attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, seq]
    mask = torch.zeros(batch, 1, seq, seq, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)  # [batch, 1, seq, seq]
