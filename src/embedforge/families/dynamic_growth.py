"""What the dynamic family changes in training: a pull towards sparse embeddings, and an embedding that changes
size between epochs.

After every whole epoch ``DimensionGrowth`` embeds a fixed sample of validation
sentences, asks ``plan_dimensions`` what to do, and applies it to the model's
``DynamicHead`` and to every map that reads its output (the distillation projection),
so the loss sees the same space. Any change rebuilds the optimizer (its state belonged
to the old tensors) and re-batches the remaining epochs at
``initial_batch × initial_dims / dims`` examples, floored at ``min_batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from embedforge.config.base import Section
from embedforge.models.dynamic import (
    adapted_batch_size,
    dynamic_head,
    grow_linear_inputs,
    plan_dimensions,
    prune_linear_inputs,
    sparsity_penalty,
)
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.checkpoint import TrainState
from embedforge.training.hooks import Loop
from embedforge.training.inference import embed_rows

SAMPLE_SENTENCES = 2000  # validation sentences whose embeddings decide saturation and dead dimensions


class SparsityLoss(nn.Module):
    """The pull towards sparse embeddings (see ``models.dynamic.sparsity_penalty``), over every embedded sentence."""

    def select(self, step: Any) -> tuple[torch.Tensor, ...]:
        return (step.all_embeddings(),)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return sparsity_penalty(embeddings)


class DimensionGrowth:
    """The epoch hook of a ``model.kind: dynamic`` run."""

    def __init__(
        self,
        params: Section,  # model.dynamic: families.dynamic.DynamicParams
        sample_rows: np.ndarray,
        initial_batch: int,
        make_batches: Callable[[int], LengthBucketedBatches],
    ):
        self.params = params
        self.sample_rows = sample_rows[:SAMPLE_SENTENCES]
        self.initial_batch = initial_batch
        self.make_batches = make_batches

    def batch_size(self, dims: int) -> int:
        return adapted_batch_size(self.initial_batch, self.params.embedding_dim, dims, self.params.min_batch_size)

    def attach(self, loop: Loop) -> None:
        """A later phase starts with the model as the previous one left it: take its dimensions."""
        self.adopt(loop, TrainState(), dynamic_head(loop.model).dims)

    def __call__(self, loop: Loop, state: TrainState) -> dict[str, float]:
        head = dynamic_head(loop.model)
        vectors = torch.from_numpy(embed_rows(loop, self.sample_rows))
        rule = self.params
        plan = plan_dimensions(
            vectors,
            state.epoch,
            head.dims,
            expand_by=rule.expand_by,
            expand_interval=rule.expand_interval,
            max_dims=rule.max_dims,
            saturation=rule.saturation,
            active_rate=rule.active_rate,
            prune=rule.prune,
        )
        pruned = 0 if plan.keep is None else int((~plan.keep).sum())
        if pruned:
            head.prune(plan.keep)
            loop.objective.resize_student_input(lambda linear: prune_linear_inputs(linear, plan.keep))
        if plan.grow_by:
            head.grow(plan.grow_by)
            loop.objective.resize_student_input(lambda linear: grow_linear_inputs(linear, plan.grow_by))
        if plan.changes_dimensions:
            self.adopt(loop, state, head.dims)
        low, high = rule.sparsity_target
        return {
            "dims": head.dims,
            "dims.grown": plan.grow_by,
            "dims.pruned": pruned,
            "dims.active": plan.active,
            "saturation": plan.saturation,
            "sparsity": plan.sparsity,
            "sparsity_in_band": float(low <= plan.sparsity <= high),
            "batch_size": loop.batches.batch_size,
        }

    def adopt(self, loop: Loop, state: TrainState, dims: int) -> None:
        """Make ``dims`` the loop's: a new optimizer, the architecture checkpoints record, the adapted batch."""
        loop.optimizer = loop.build_optimizer()
        loop.architecture["student_dim"] = dims
        batch_size = self.batch_size(dims)
        if batch_size != loop.batches.batch_size:
            loop.rebatch(self.make_batches(batch_size), state)

    def before_loading(self, loop: Loop, architecture: dict[str, Any]) -> None:
        """Give the model (and projection) the dimensions of the checkpoint about to be loaded; its weights then
        overwrite these."""
        dims = architecture["student_dim"]
        head = dynamic_head(loop.model)
        if dims < head.dims:
            keep = torch.arange(head.dims) < dims  # the head moves the mask to its weights' device
            head.prune(keep)
            loop.objective.resize_student_input(lambda linear: prune_linear_inputs(linear, keep))
        elif dims > head.dims:
            by = dims - head.dims
            head.grow(by)
            loop.objective.resize_student_input(lambda linear: grow_linear_inputs(linear, by))
        self.adopt(loop, TrainState(), head.dims)
