"""What the attribution math needs to know about one model family, behind one small interface.

Each family fills a pyvene-style ``SITES`` table (abstract site -> module path) and implements the few
family-specific computations (the FFN/MoE neuron activations, the final norm's form). The attribution engine
and the interventions only ever talk to a ``ModelAdapter``; they never name a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gated_lpi_exp.errors import AttributionError

# A place in a parameter to zero for an ablation: (parameter, index usable as ``param[index]``).
WeightSlice = tuple[nn.Parameter, tuple]


@dataclass(frozen=True)
class NormSpec:
    """The final norm as ``γ ⊙ center(u) / scale(u) + β`` (all in float32).

    ``kind="rms"``: center is the identity and ``scale(u) = sqrt(mean(u²) + eps)``.
    ``kind="layer"``: ``center(u) = u − mean(u)`` and ``scale(u) = sqrt(var(u) + eps)`` (biased variance).
    Both scales are ``sqrt(mean(center(u)²) + eps)``, which the engine relies on.
    """

    kind: Literal["rms", "layer"]
    weight: Tensor | None  # [d] gain γ, None when the norm has none
    bias: Tensor | None  # [d] shift β, None when the norm has none
    eps: float

    def center(self, u: Tensor, dim: int = -1) -> Tensor:
        """``center(u)`` along ``dim`` (identity for RMSNorm)."""
        return u - u.mean(dim=dim, keepdim=True) if self.kind == "layer" else u

    def inv_scale(self, u: Tensor) -> Tensor:
        """``1 / scale(u)`` over the last dimension, shape ``u.shape[:-1]``."""
        centered = self.center(u)
        return torch.rsqrt(centered.pow(2).mean(-1) + self.eps)


@dataclass(frozen=True)
class NeuronGroup:
    """A block of neurons that write to the residual through columns of one weight matrix.

    Neuron ``start + i`` contributes ``coef[:, start + i] * columns[:, i]``. ``rows`` lists the batch rows in
    which the group is active (a routed expert); ``None`` means every row.
    """

    start: int
    columns: Tensor  # [d, size] a view of the model's weight, model dtype, not yet upcast
    rows: Tensor | None = None  # [rows] long

    @property
    def size(self) -> int:
        """Number of neurons in the group."""
        return self.columns.shape[1]


@dataclass(frozen=True)
class FFNNeurons:
    """The FFN/MoE neurons of one layer at position T, ready to score."""

    coef: Tensor  # [batch, ffn_neurons] float32; exactly 0 for experts not routed at T
    groups: list[NeuronGroup]
    routed: Tensor | None = None  # [batch, experts] bool, MoE only


class ModelAdapter:
    """Family-independent view of a pre-norm decoder-only causal LM.

    Subclasses set ``family`` and extend ``SITES``; the shared sites below hold for every supported family.
    """

    family: ClassVar[str] = ""
    is_moe: ClassVar[bool] = False
    SITES: ClassVar[dict[str, str]] = {
        "backbone": "model",
        "layer": "model.layers.{layer}",
        "o_proj": "model.layers.{layer}.self_attn.o_proj",
        "post_attn_norm": "model.layers.{layer}.post_attention_layernorm",
        "mlp": "model.layers.{layer}.mlp",
        "final_norm": "model.norm",
        "unembedding": "lm_head",
    }

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        config = model.config
        self.n_layers: int = config.num_hidden_layers
        self.n_heads: int = config.num_attention_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.d_model: int = config.hidden_size
        self.vocab_size: int = self.unembedding().weight.shape[0]
        self.n_experts: int = 1
        self.expert_width: int = config.intermediate_size
        self.top_k: int = 1
        self._check_attention()

    @property
    def ffn_neurons(self) -> int:
        """FFN neurons per layer: ``n_experts * expert_width`` (dense: ``d_ff``)."""
        return self.n_experts * self.expert_width

    @property
    def attn_neurons(self) -> int:
        """Attention neurons (o_proj input units) per layer: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    def module(self, site: str, layer: int | None = None) -> nn.Module:
        """The module at an abstract ``site`` of the ``SITES`` table (``layer`` for per-layer sites)."""
        path = self.SITES[site]
        if "{layer}" in path:
            if layer is None:
                raise AttributionError(f"site {site!r} is per layer; pass layer=")
            path = path.format(layer=layer)
        return self.model.get_submodule(path)

    def backbone(self) -> nn.Module:
        """The decoder stack without the unembedding (runs the final norm, skips the [B, S, V] logits)."""
        return self.module("backbone")

    def layer(self, layer: int) -> nn.Module:
        """Decoder layer ``layer``; its input is ``r_in[layer]``."""
        return self.module("layer", layer)

    def o_proj(self, layer: int) -> nn.Linear:
        """Attention output projection; its input is ``z``, its output ``a``."""
        return self.module("o_proj", layer)

    def post_attn_norm(self, layer: int) -> nn.Module:
        """Norm in front of the FFN/MoE block; input ``r_mid``, output ``x̂``."""
        return self.module("post_attn_norm", layer)

    def mlp(self, layer: int) -> nn.Module:
        """FFN/MoE block; its output is ``f``."""
        return self.module("mlp", layer)

    def final_norm(self) -> nn.Module:
        """Final norm; its input is ``h_L``."""
        return self.module("final_norm")

    def unembedding(self) -> nn.Linear:
        """``lm_head`` with ``weight`` ``W_U [V, d]``."""
        return self.module("unembedding")

    def compute_device(self) -> torch.device:
        """Where the attribution math runs: the unembedding's device."""
        return self.unembedding().weight.device

    def input_device(self) -> torch.device:
        """Where input ids must live: the input embedding's device."""
        return self.model.get_input_embeddings().weight.device

    def final_norm_spec(self) -> NormSpec:
        """The final norm's form (center, γ, β, eps, scale kind); family specific."""
        raise NotImplementedError

    def attn_group(self, layer: int) -> NeuronGroup:
        """Attention neurons: neuron ``h*head_dim + k`` writes ``z_k * W_O[:, h*head_dim + k]``."""
        return NeuronGroup(start=0, columns=self.o_proj(layer).weight)

    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """FFN/MoE neuron coefficients at T from the block input ``x_hat [B, d]`` (float32).

        Args:
            layer: Layer index.
            x_hat: ``[batch, d]`` float32 post-attention-norm output at T.
            routing: ``[batch, top_k]`` expert indices the model itself chose at T (MoE only); recomputed
                from ``x_hat`` when None.

        Returns:
            The coefficients (``g_e * m_{e,j}`` or ``m_j``) and the weight column groups they multiply.
        """
        raise NotImplementedError

    def read_routing(self, router_output: object) -> Tensor | None:
        """Expert indices ``[tokens, top_k]`` from the router's forward output (MoE only)."""
        return None

    def head_slices(self, layer: int, heads: list[int]) -> list[WeightSlice]:
        """o_proj weight columns whose zeroing equals zeroing the heads' slices of the o_proj input."""
        cols = [h * self.head_dim + k for h in heads for k in range(self.head_dim)]
        index = torch.tensor(cols, dtype=torch.long, device=self.o_proj(layer).weight.device)
        return [(self.o_proj(layer).weight, (slice(None), index))]

    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Down-projection weight columns whose zeroing equals zeroing the neurons' activations ``m``."""
        raise NotImplementedError

    def _check_attention(self) -> None:
        for layer in range(self.n_layers):
            o_proj = self.o_proj(layer)
            if o_proj.bias is not None:
                raise AttributionError(
                    "o_proj has a bias: the attention-neuron decomposition Σ z_k W_O[:, k] = a needs none"
                )
            if o_proj.in_features != self.attn_neurons:
                raise AttributionError(
                    f"o_proj takes {o_proj.in_features} inputs, expected heads*head_dim={self.attn_neurons}"
                )
