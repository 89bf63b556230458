"""Between epochs, the dynamic family's embedding changes size: dead dimensions go, and a saturated one grows.

After every whole epoch ``DimensionGrowth`` embeds a fixed sample of validation
sentences, asks ``plan_dimensions`` what to do, and applies it to the model's
``DynamicHead`` and to the distillation projection that reads its output, so the
loss sees the same space. Any change rebuilds the optimizer (its state belonged to
the old tensors) and re-batches the remaining epochs at
``initial_batch × initial_dims / dims`` examples, floored at ``min_batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from embedforge.config import DynamicParams
from embedforge.models.dynamic import (
    adapted_batch_size,
    dynamic_head,
    grow_linear_inputs,
    plan_dimensions,
    prune_linear_inputs,
)
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.checkpoint import TrainState
from embedforge.training.trainer import Trainer

SAMPLE_SENTENCES = 2000  # validation sentences whose embeddings decide saturation and dead dimensions


class DimensionGrowth:
    """The ``on_epoch_end`` hook of a ``model.kind: dynamic`` run."""

    def __init__(
        self,
        params: DynamicParams,
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

    def __call__(self, trainer: Trainer, state: TrainState) -> dict[str, float]:
        head = dynamic_head(trainer.model)
        vectors = torch.from_numpy(trainer.embed_rows(self.sample_rows))
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
            self.resize_projection(trainer, lambda linear: prune_linear_inputs(linear, plan.keep))
        if plan.grow_by:
            head.grow(plan.grow_by)
            self.resize_projection(trainer, lambda linear: grow_linear_inputs(linear, plan.grow_by))
        if plan.changes_dimensions:
            self.adopt(trainer, state, head.dims)
        low, high = rule.sparsity_target
        return {
            "dims": head.dims,
            "dims.grown": plan.grow_by,
            "dims.pruned": pruned,
            "dims.active": plan.active,
            "saturation": plan.saturation,
            "sparsity": plan.sparsity,
            "sparsity_in_band": float(low <= plan.sparsity <= high),
            "batch_size": trainer.batches.batch_size,
        }

    def adopt(self, trainer: Trainer, state: TrainState, dims: int) -> None:
        """Make ``dims`` the trainer's: a new optimizer, the architecture checkpoints record, the adapted batch."""
        trainer.optimizer = trainer.build_optimizer()
        trainer.architecture["student_dim"] = dims
        batch_size = self.batch_size(dims)
        if batch_size != trainer.batches.batch_size:
            trainer.rebatch(self.make_batches(batch_size), state)

    @staticmethod
    def resize_projection(trainer: Trainer, change: Callable[[nn.Linear], nn.Linear]) -> None:
        if "distill" in trainer.objective.weights:
            distill = trainer.objective.losses["distill"]
            distill.projection = change(distill.projection)

    def match(self, trainer: Trainer, state: TrainState, dims: int) -> None:
        """Give the model (and projection) ``dims`` dimensions, as a checkpoint about to be loaded has; its
        weights then overwrite these."""
        head = dynamic_head(trainer.model)
        if dims < head.dims:
            keep = torch.arange(head.dims) < dims  # the head moves the mask to its weights' device
            head.prune(keep)
            self.resize_projection(trainer, lambda linear: prune_linear_inputs(linear, keep))
        elif dims > head.dims:
            by = dims - head.dims
            head.grow(by)
            self.resize_projection(trainer, lambda linear: grow_linear_inputs(linear, by))
        self.adopt(trainer, state, head.dims)
