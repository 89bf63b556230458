"""The ``dynamic`` student (the NAOMI-II seed): an embedding whose dimensions grow while saturated.

The encoder student's pooled vector goes through a ``DynamicHead``: a linear map to ``dims``
dimensions followed by a soft threshold, whose exact zeros make each dimension's use
measurable. Between epochs the trainer asks ``plan_dimensions`` what to do with a sample of
embeddings: prune the dimensions no sentence uses, then grow by ``expand_by`` while enough of
them are active. Everything here is a pure unit; the trainer owns the epoch hooks, the
optimizer rebuild (growing and pruning make new Parameter objects) and the re-batching
(``adapted_batch_size``).

The saved model is Transformer + Pooling + DynamicHead + Normalize; the head is a class of this
package, so sentence-transformers reloads it only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from embedforge.models import encoder
from embedforge.models.encoder import FP32_BYTES, build_encoder, estimate_memory_bytes
from embedforge.models.modules import ConfiguredModule

if TYPE_CHECKING:
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    from embedforge.config import ModelParams

# New dimensions start at a tenth of a fresh layer's scale: large enough to pass the soft
# threshold and receive gradients, small enough not to reshuffle the trained similarities.
NEW_ROW_SCALE = 0.1
# Tensors of batch x dims that autograd keeps for the head and the Normalize after it: the
# linear output, |u| - shrink after the relu, sign(u), z, and the normalised embedding.
HEAD_ACTIVATIONS_PER_DIM = 5


class DynamicHead(ConfiguredModule):
    """Pooled vector -> soft-thresholded ``dims``-dimensional embedding, resizable between epochs."""

    config_keys: ClassVar[list[str]] = ["input_dim", "dims", "shrink"]

    def __init__(self, input_dim: int, dims: int, shrink: float = 0.0) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.shrink = shrink
        self.linear = nn.Linear(input_dim, dims)

    @property
    def dims(self) -> int:
        return self.linear.out_features

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features["sentence_embedding"] = soft_threshold(self.linear(features["sentence_embedding"]), self.shrink)
        return features

    def get_embedding_dimension(self) -> int:
        return self.dims

    def grow(self, by: int) -> None:
        """Add ``by`` dimensions after the existing ones, whose weights are kept bit for bit."""
        if by < 1:
            raise ValueError(f"grow needs at least one new dimension, got {by}")
        weight, bias = self.linear.weight, self.linear.bias
        bound = NEW_ROW_SCALE / math.sqrt(self.input_dim)
        new_rows = torch.empty(by, self.input_dim, dtype=weight.dtype).uniform_(-bound, bound).to(weight.device)
        new_bias = torch.zeros(by, dtype=bias.dtype, device=bias.device)
        self.linear = linear_from(
            self.linear, torch.cat([weight.detach(), new_rows]), torch.cat([bias.detach(), new_bias])
        )

    def prune(self, keep: torch.Tensor) -> None:
        """Keep only the dimensions where the bool mask ``keep`` is true, in their order."""
        kept = kept_indices(keep, self.dims).to(self.linear.weight.device)
        weight, bias = self.linear.weight.detach(), self.linear.bias.detach()
        self.linear = linear_from(self.linear, weight.index_select(0, kept), bias.index_select(0, kept))


def soft_threshold(values: torch.Tensor, shrink: float) -> torch.Tensor:
    """sign(u) * relu(|u| - shrink): values within ``shrink`` of zero become exactly zero."""
    return torch.sign(values) * torch.relu(values.abs() - shrink)


def linear_from(like: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new Linear holding ``weight`` and ``bias`` as new Parameters, trainable as ``like``'s were."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=like.weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=like.bias.requires_grad)
    return linear


def kept_indices(keep: torch.Tensor, dims: int) -> torch.Tensor:
    """The indices (on the CPU) a bool mask over ``dims`` dimensions keeps; at least one.

    Indices rather than the mask, since a mask cannot index weights on the meta device.
    """
    if keep.dtype != torch.bool or keep.shape != (dims,):
        raise ValueError(f"keep must be a bool mask of shape ({dims},), got {keep.dtype} {tuple(keep.shape)}")
    kept = keep.cpu().nonzero().squeeze(1)
    if not len(kept):
        raise ValueError("keep must keep at least one dimension")
    return kept


def grow_linear_inputs(linear: nn.Linear, by: int) -> nn.Linear:
    """``linear`` reading ``by`` more inputs through zero columns: its output is unchanged right after growth."""
    weight = linear.weight.detach()
    zeros = torch.zeros(weight.shape[0], by, dtype=weight.dtype, device=weight.device)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return linear_from(linear, torch.cat([weight, zeros], dim=1), bias)


def prune_linear_inputs(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """``linear`` reading only the inputs ``keep`` marks, so it follows a pruned head."""
    kept = kept_indices(keep, linear.in_features).to(linear.weight.device)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return linear_from(linear, linear.weight.detach().index_select(1, kept), bias)


def dimension_activity(embeddings: torch.Tensor) -> torch.Tensor:
    """For each dimension, the share of sentences (rows) where it is not exactly zero."""
    return (embeddings != 0).float().mean(dim=0)


def sparsity(embeddings: torch.Tensor) -> float:
    """The share of exact zeros over the whole [sentences x dims] sample."""
    return (embeddings == 0).float().mean().item()


def sparsity_penalty(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean L1 norm of the unit embeddings over sqrt(dims): 1/sqrt(dims) one-hot, 1 flat; scale-free."""
    unit = nn.functional.normalize(embeddings, dim=-1)
    return (unit.abs().sum(dim=-1) / math.sqrt(embeddings.shape[-1])).mean()


def adapted_batch_size(initial_batch: int, initial_dims: int, current_dims: int, floor: int) -> int:
    """The batch that keeps batch x dims where it started, never below ``floor``."""
    return max(floor, initial_batch * initial_dims // current_dims)


@dataclass(frozen=True)
class DimensionPlan:
    """What to do with the head after an epoch: prune to ``keep`` (None: nothing), then grow by ``grow_by``."""

    grow_by: int
    keep: torch.Tensor | None
    saturation: float
    sparsity: float
    active: int
    dead: int

    @property
    def changes_dimensions(self) -> bool:
        """Whether the head is resized, so the optimizer and the batches must be rebuilt."""
        return self.grow_by > 0 or self.keep is not None


def plan_dimensions(
    embeddings: torch.Tensor,
    epoch: int,
    dims: int,
    *,
    expand_by: int,
    expand_interval: int,
    max_dims: int,
    saturation: float,
    active_rate: float,
    prune: bool,
) -> DimensionPlan:
    """Decide the head's next size from a sample of its embeddings after ``epoch`` (counted from 1).

    First prune (when ``prune``): the dead dimensions, those zero for every sentence of the
    sample, go, but never the last one. Then grow, measured on the dimensions that remain:
    saturation is their share of active dimensions (activity >= ``active_rate``); on every
    ``expand_interval``-th epoch, when saturation >= ``saturation``, add ``expand_by``
    dimensions, fewer where ``max_dims`` would be passed.
    """
    if embeddings.shape[-1] != dims:
        raise ValueError(f"the sample has {embeddings.shape[-1]} dimensions but the head has {dims}")
    activity = dimension_activity(embeddings)
    alive = activity > 0
    dead = dims - int(alive.sum())
    keep = None
    if prune and dead:
        keep = alive if alive.any() else torch.arange(dims, device=alive.device) == 0
    remaining = dims if keep is None else int(keep.sum())
    active = int((activity >= active_rate).sum())
    measured = active / remaining
    room = max(0, max_dims - remaining)
    due = epoch % expand_interval == 0 and measured >= saturation
    return DimensionPlan(
        grow_by=min(expand_by, room) if due else 0,
        keep=keep,
        saturation=measured,
        sparsity=sparsity(embeddings),
        active=active,
        dead=dead,
    )


def build_dynamic(encoder: SentenceTransformer, embedding_dim: int, shrink: float, seed: int) -> SentenceTransformer:
    """``encoder`` (Transformer, Pooling, Normalize, as ``build_encoder`` returns it) with a seeded head before
    Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = list(encoder)
    expected = (Transformer, Pooling, Normalize)
    if len(modules) != len(expected) or not all(map(isinstance, modules, expected)):
        raise ValueError(
            f"expected a Transformer, Pooling, Normalize encoder, got {[type(m).__name__ for m in modules]}"
        )
    transformer, pooling, normalize = modules
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = DynamicHead(pooling.get_embedding_dimension(), embedding_dim, shrink)
    return SentenceTransformer(modules=[transformer, pooling, head, normalize], device="cpu")


def dynamic_head(model: SentenceTransformer) -> DynamicHead:
    """The model's DynamicHead, wherever it sits."""
    heads = [module for module in model if isinstance(module, DynamicHead)]
    if len(heads) != 1:
        raise ValueError(f"expected one DynamicHead in the model, found {len(heads)}")
    return heads[0]


def enable_checkpointing(model: SentenceTransformer) -> None:
    """The backbone's layers recompute as the encoder family's do; the head is small and keeps its activations."""
    encoder.enable_checkpointing(model)


def estimate_dynamic_memory(model: SentenceTransformer, batch_size: int, max_length: int) -> dict[str, int]:
    """``estimate_memory_bytes`` for the backbone and every parameter, plus the head's activations.

    The head keeps its pooled input and ``HEAD_ACTIVATIONS_PER_DIM`` tensors of batch x dims, so
    the estimate follows the head as it grows.
    """
    estimate = estimate_memory_bytes(model, batch_size, max_length)
    head = dynamic_head(model)
    head_activations = FP32_BYTES * batch_size * (head.input_dim + HEAD_ACTIVATIONS_PER_DIM * head.dims)
    estimate["activations"] += head_activations
    estimate["total"] += head_activations
    return estimate


def build_student(
    params: ModelParams, tokenizer_dir: Path, max_length: int, teacher_path: Path | None, seed: int
) -> SentenceTransformer:
    """The ``dynamic`` family: the encoder student with a sparse head of ``model.dynamic.embedding_dim`` dims at
    first."""
    encoder = build_encoder(params, tokenizer_dir, max_length, teacher_path, seed)
    return build_dynamic(encoder, params.dynamic.embedding_dim, params.dynamic.shrink, seed)
