"""What the attribution math needs to know about one model family, behind one small interface.

Each family fills a pyvene-style ``SITES`` table (abstract site -> module path), a ``READS`` table (which module
input or output each captured activation is) and implements the few family-specific computations (the FFN/MoE
neuron activations, the final norm's form, the ablation slices). The attribution engine and the interventions
only ever talk to a ``ModelAdapter``; they never name a family.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gated_lpi_exp.errors import AttributionError

# A place in a parameter to zero for an ablation: (parameter, index usable as ``param[index]``).
WeightSlice = tuple[nn.Parameter, tuple]
# Where capture reads an activation: (abstract site, "input" or "output" of that module).
Read = tuple[str, Literal["input", "output"]]


@dataclass(frozen=True)
class NormSpec:
    """A norm as ``γ ⊙ center(u) / scale(u) + β`` (all in float32).

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


def rms_spec(norm: nn.Module) -> NormSpec:
    """The ``NormSpec`` of a transformers RMSNorm (gain ``weight``, epsilon ``variance_epsilon`` or ``eps``)."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    if eps is None:
        raise AttributionError(f"{type(norm).__name__} has no variance_epsilon/eps; cannot read its epsilon")
    return NormSpec(kind="rms", weight=norm.weight, bias=None, eps=float(eps))


@dataclass(frozen=True)
class NeuronGroup:
    """A block of neurons that write to the residual through columns of one weight matrix.

    Neuron ``start + i`` contributes ``coef[:, start + i] * block()[:, i]``. ``rows`` lists the batch rows in
    which the group is active (a routed expert); ``None`` means every row. ``post_norm`` is a post-sublayer
    norm (OLMo-2) frozen on the whole sublayer output: its linear part ``γ ⊙ center(·)`` is applied to every
    column, its per-example scale is already in ``coef``.
    """

    start: int
    columns: Tensor  # [d, size] a view of the model's weight, model dtype, not yet upcast
    rows: Tensor | None = None  # [rows] long
    post_norm: NormSpec | None = None

    @property
    def size(self) -> int:
        """Number of neurons in the group."""
        return self.columns.shape[1]

    def block(self, lo: int = 0, hi: int | None = None) -> Tensor:
        """Columns ``lo:hi`` as written to the residual, float32 ``[d, n]`` (upcast one chunk at a time)."""
        cols = self.columns[:, lo:hi].float()  # [d, n]
        if self.post_norm is None:
            return cols
        cols = self.post_norm.center(cols, dim=0)
        gain = self.post_norm.weight
        return cols * gain.to(cols)[:, None] if gain is not None else cols


@dataclass(frozen=True)
class FFNNeurons:
    """The neurons of one sublayer (FFN/MoE, or attention) at position T, ready to score."""

    coef: Tensor  # [batch, neurons] float32; exactly 0 for experts not routed at T and for padding
    groups: list[NeuronGroup]
    routed: Tensor | None = None  # [batch, experts] bool, MoE only


class ModelAdapter(abc.ABC):
    """Family-independent view of a decoder-only causal LM whose layers add their sublayers to a residual.

    Subclasses list the ``model_types`` they serve, extend ``SITES`` (and ``READS`` where the family's
    residual differs from a sequential pre-norm block), and implement the abstract methods.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    is_moe: ClassVar[bool] = False
    SITES: ClassVar[dict[str, str]] = {
        "backbone": "model",
        "layer": "model.layers.{layer}",
        "o_proj": "model.layers.{layer}.self_attn.o_proj",
        "ffn_norm": "model.layers.{layer}.post_attention_layernorm",
        "mlp": "model.layers.{layer}.mlp",
        "final_norm": "model.norm",
        "unembedding": "lm_head",
    }
    READS: ClassVar[dict[str, Read | None]] = {
        "z": ("o_proj", "input"),
        "a": ("o_proj", "output"),
        "r_mid": ("ffn_norm", "input"),
        "x_hat": ("ffn_norm", "output"),
        "f": ("mlp", "output"),
    }
    """Where capture reads each activation at T. ``a``/``f`` are the sublayer outputs as added to the
    residual; ``r_mid`` None means it exists nowhere in the model (parallel blocks) and is ``r_in + a``;
    post-norm families add ``a_raw``/``f_raw``, the sublayer outputs before their post-norm."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        config = model.config
        self.family: str = config.model_type
        self.n_layers: int = config.num_hidden_layers
        self.n_heads: int = config.num_attention_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.d_model: int = config.hidden_size
        self.vocab_size: int = self.unembedding().weight.shape[0]
        self.n_experts: int = 1
        self.expert_width: int = getattr(config, "intermediate_size", 0)
        self.top_k: int = 1
        self.reads: dict[str, Read | None] = dict(self.READS)

    @property
    def ffn_neurons(self) -> int:
        """FFN neurons per layer: ``n_experts * expert_width`` (dense: ``d_ff``)."""
        return self.n_experts * self.expert_width

    @property
    def attn_neurons(self) -> int:
        """Attention neurons (o_proj input units, query heads) per layer: ``n_heads * head_dim``."""
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
        """Attention output projection; its input is ``z``."""
        return self.module("o_proj", layer)

    def mlp(self, layer: int) -> nn.Module:
        """FFN/MoE block."""
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

    def routed_layer(self, layer: int) -> bool:
        """Whether ``layer`` routes tokens to experts (its router output is captured)."""
        return False

    def post_norm_spec(self, layer: int, sublayer: Literal["attn", "ffn"]) -> NormSpec | None:
        """The norm applied to a sublayer's output before it joins the residual (post-norm); None if none."""
        return None

    def locate_ffn(self, unit: int) -> tuple[int, int]:
        """``(expert, neuron)`` of an FFN index; expert is -1 for a dense FFN."""
        return -1, unit

    def attn_units(self, layer: int, z: Tensor, raw: Tensor | None = None) -> FFNNeurons:
        """Attention neurons at T: neuron ``h*head_dim + k`` writes ``z_k · W_O[:, h*head_dim + k]``.

        Args:
            layer: Layer index.
            z: ``[batch, heads*head_dim]`` float32 o_proj input at T.
            raw: ``[batch, d]`` the o_proj output at T, needed only by post-norm families.
        """
        neurons = FFNNeurons(coef=z, groups=[NeuronGroup(start=0, columns=self.o_proj(layer).weight)])
        return self._through_post_norm(neurons, self.post_norm_spec(layer, "attn"), raw)

    def ffn_units(
        self, layer: int, x_hat: Tensor, routing: Tensor | None = None, raw: Tensor | None = None
    ) -> FFNNeurons:
        """FFN/MoE neurons at T as they write to the residual (``ffn_neurons_at``, then any post-norm)."""
        neurons = self.ffn_neurons_at(layer, x_hat, routing)
        return self._through_post_norm(neurons, self.post_norm_spec(layer, "ffn"), raw)

    @staticmethod
    def _through_post_norm(neurons: FFNNeurons, spec: NormSpec | None, raw: Tensor | None) -> FFNNeurons:
        """Freeze a post-norm at its scale on the whole sublayer output ``raw``: units still sum to it."""
        if spec is None:
            return neurons
        if raw is None:
            raise AttributionError("a post-norm family needs the raw sublayer output to freeze its norm")
        coef = neurons.coef * spec.inv_scale(raw)[:, None]  # [batch, neurons]
        groups = [replace(g, post_norm=spec) for g in neurons.groups]
        return FFNNeurons(coef=coef, groups=groups, routed=neurons.routed)

    def read_routing(self, router_output: object) -> Tensor | None:
        """Expert indices ``[tokens, top_k]`` from the router's forward output (MoE only)."""
        return None

    def head_slices(self, layer: int, heads: list[int]) -> list[WeightSlice]:
        """o_proj weight columns whose zeroing equals zeroing the heads' slices of the o_proj input."""
        cols = [h * self.head_dim + k for h in heads for k in range(self.head_dim)]
        index = torch.tensor(cols, dtype=torch.long, device=self.o_proj(layer).weight.device)
        return [(self.o_proj(layer).weight, (slice(None), index))]

    @abc.abstractmethod
    def final_norm_spec(self) -> NormSpec:
        """The final norm's form (center, γ, β, eps, scale kind)."""

    @abc.abstractmethod
    def ffn_neurons_at(self, layer: int, x_hat: Tensor, routing: Tensor | None = None) -> FFNNeurons:
        """FFN/MoE neuron coefficients at T from the block input ``x_hat [B, d]`` (float32).

        Args:
            layer: Layer index.
            x_hat: ``[batch, d]`` float32 input of the FFN/MoE block at T.
            routing: ``[batch, top_k]`` expert indices the model itself chose at T (MoE only); recomputed
                from ``x_hat`` when None.

        Returns:
            The coefficients (what the block multiplies each down-projection column by) and the weight column
            groups they multiply, before any post-norm.
        """

    @abc.abstractmethod
    def ffn_slices(self, layer: int, neurons: list[int]) -> list[WeightSlice]:
        """Down-projection weight columns whose zeroing equals zeroing the neurons' activations ``m``."""

    def check(self) -> None:
        """Fail early on a model whose shapes do not fit the decomposition."""
        for layer in range(self.n_layers):
            o_proj = self.o_proj(layer)
            if o_proj.in_features != self.attn_neurons:
                raise AttributionError(
                    f"{self.family}: o_proj takes {o_proj.in_features} inputs, expected "
                    f"heads*head_dim={self.attn_neurons}"
                )


def column_slices(weight: Tensor, neurons: list[int]) -> list[WeightSlice]:
    """Columns ``neurons`` of a ``[d, width]`` weight (a dense down projection)."""
    index = torch.tensor(neurons, dtype=torch.long, device=weight.device)
    return [(weight, (slice(None), index))]
