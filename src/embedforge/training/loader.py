"""An epoch's remaining batches, built ahead by ``train.loader_workers`` worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm

from embedforge.training.batches import LengthBucketedBatches, PairBatch
from embedforge.training.checkpoint import TrainState
from embedforge.training.distributed import ONE_PROCESS, World, rank_micro_batches


class EpochBatches(torch.utils.data.Dataset):
    """The remaining global batches of one epoch, each as (example indices, this rank's built micro-batches), for a
    DataLoader."""

    def __init__(
        self, batches: LengthBucketedBatches, plan: list[list[int]], micro_batches: int, world: World = ONE_PROCESS
    ):
        self.batches, self.plan, self.micro_batches, self.world = batches, plan, micro_batches, world

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[list[int], list[PairBatch]]:
        indices = self.plan[index]
        return indices, rank_micro_batches(self.batches, indices, self.micro_batches, self.world)


def unchanged(item: Any) -> Any:
    return item


def epoch_loader(
    batches: LengthBucketedBatches, plan: list[list[int]], micro_batches: int, world: World, workers: int
) -> Iterator[tuple[list[int], list[PairBatch]]]:
    """The batches of ``plan`` with their micro-batches, built by ``workers`` processes (none: in this one).

    The loader gets its own generator: seeding workers from torch's global one would shift
    the dropout masks, and a resumed run would no longer retrace the uninterrupted one.
    """
    return iter(
        torch.utils.data.DataLoader(
            EpochBatches(batches, plan, micro_batches, world),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            collate_fn=unchanged,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator(),
        )
    )


def epoch_progress(steps: int, state: TrainState, epochs: int, world: World) -> tqdm:
    """A bar over the epoch's steps (on stderr, at most once a second, so logs stay readable; rank 0 only)."""
    return tqdm(
        total=steps,
        initial=state.batches_done,
        desc=f"epoch {state.epoch + 1}/{epochs}",
        unit="step",
        mininterval=1.0,
        disable=not world.is_main,
    )
