"""A loss that stopped being a finite number ends the run before the optimizer step, naming where it happened."""

from __future__ import annotations

import torch

from embedforge.errors import UserError
from embedforge.training.batches import PairBatch
from embedforge.training.checkpoint import TrainState
from embedforge.training.distributed import World


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


def refuse_non_finite(
    world: World, device: str, state: TrainState, losses: torch.Tensor, micro: list[PairBatch], steps_per_epoch: int
) -> None:
    """Stop before the optimizer step if a micro-batch's loss is not finite on any rank, naming where.

    Sync point: one read of one flag per step, so a diverged run stops at the step it diverged.
    """
    finite = torch.isfinite(losses)
    if not world.any(not bool(finite.all()), device):
        return
    if bool(finite.all()):
        raise TrainingDiverged(
            f"train: the loss became non-finite on another training process at step {state.step + 1}; "
            f"checkpoints/best is untouched. Lower train.lr, or use train.precision: fp32"
        )
    index = int((~finite).nonzero()[0])
    raise TrainingDiverged(
        f"train: the loss became {float(losses[index])} at step {state.step + 1} (epoch {state.epoch + 1}, "
        f"batch {state.batches_done + 1} of {steps_per_epoch}, micro-batch {index + 1}, first "
        f"sentence {micro[index].anchors.sentence_ids[0]}); checkpoints/best is untouched. Lower train.lr, "
        f"or use train.precision: fp32"
    )
