"""The neurons of the two dense FFN shapes the supported families use, and of fused expert tensors.

- gated (SwiGLU) MLP: ``m = act(W_gate x̂) ⊙ (W_up x̂)``, written through the columns of ``W_down``
  (Llama, OLMo, OLMo-2, and the shared experts and dense layers of MoE models);
- plain MLP with biases: ``m = act(W_in x̂ + b_in)`` through ``W_out`` (GPT-NeoX); ``b_out`` is no neuron;
- fused experts (transformers >= 5): ``gate_up_proj [E, 2·w, d]`` (gate half first), ``down_proj [E, d, w]``,
  both transposed when ``is_transposed``.
"""

from __future__ import annotations

from torch import Tensor, nn

from gated_lpi_exp.errors import AttributionError


def gated_mlp_activations(mlp: nn.Module, x_hat: Tensor) -> Tensor:
    """``m [batch, width] = act(W_gate x̂) ⊙ (W_up x̂)`` of a module with ``gate_proj``/``up_proj``/``act_fn``."""
    gate = x_hat @ mlp.gate_proj.weight.to(x_hat).T  # [batch, width]
    up = x_hat @ mlp.up_proj.weight.to(x_hat).T  # [batch, width]
    return mlp.act_fn(gate) * up


def plain_mlp_activations(up_proj: nn.Linear, act: nn.Module, x_hat: Tensor) -> Tensor:
    """``m [batch, width] = act(W_in x̂ + b_in)`` (the input bias belongs to the neuron's activation)."""
    pre = x_hat @ up_proj.weight.to(x_hat).T  # [batch, width]
    if up_proj.bias is not None:
        pre = pre + up_proj.bias.to(x_hat)
    return act(pre)


def mlp_width(mlp: nn.Module) -> int:
    """Neurons of a gated MLP: the input width of its ``down_proj``."""
    return mlp.down_proj.weight.shape[1]


def expert_gate_up(experts: nn.Module, e: int) -> Tensor:
    """Expert ``e``'s fused gate/up weight as ``[2·w, d]`` (gate rows first)."""
    weight = experts.gate_up_proj[e]
    return weight.T if experts.is_transposed else weight


def expert_down(experts: nn.Module, e: int) -> Tensor:
    """Expert ``e``'s down projection as ``[d, w]`` (a view)."""
    weight = experts.down_proj[e]
    return weight.T if experts.is_transposed else weight


def expert_activations(experts: nn.Module, e: int, x: Tensor) -> Tensor:
    """``m [rows, w] = act(gate) ⊙ up`` of expert ``e`` for the rows ``x [rows, d]`` routed to it."""
    gate, up = (x @ expert_gate_up(experts, e).to(x).T).chunk(2, dim=-1)  # [rows, w] each
    return experts.act_fn(gate) * up


def expert_down_index(experts: nn.Module, e: int, index: Tensor) -> tuple:
    """Index into ``experts.down_proj`` selecting columns ``index`` of expert ``e``'s ``[d, w]`` view."""
    return (e, index, slice(None)) if experts.is_transposed else (e, slice(None), index)


def check_fused_experts(experts: nn.Module, family: str) -> None:
    """Fail clearly unless the experts are fused, concatenated ``[gate; up]``, without bias or post-norm."""
    layout = {
        "is_concatenated": getattr(experts, "is_concatenated", None),
        "is_transposed": getattr(experts, "is_transposed", None),
        "has_gate": getattr(experts, "has_gate", True),
        "has_bias": getattr(experts, "has_bias", False),
        "has_post_expert_norm": getattr(experts, "has_post_expert_norm", False),
    }
    known = layout["is_concatenated"] is True and layout["is_transposed"] in (True, False)
    if not (known and layout["has_gate"] and not layout["has_bias"] and not layout["has_post_expert_norm"]):
        raise AttributionError(
            f"unsupported {family} experts layout {layout}; expected fused, concatenated [gate; up] weights "
            "without bias or post-expert norm (transformers >= 5 default)"
        )
    if not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
        raise AttributionError(f"{family} experts have no fused gate_up_proj/down_proj (transformers < 5?)")
