"""The interface between the training loop and what plugs into it: validators, epoch hooks, the summary.

They see the loop as a ``Loop`` (what it holds and the few things it lets them change), never the concrete
``Trainer``, so they can be tested and written without the loop's internals.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from embedforge.training.batches import LengthBucketedBatches, PairBatch, TokenBatch
    from embedforge.training.checkpoint import TrainState
    from embedforge.training.losses import Objective
    from embedforge.training.records import PhaseTimes


class Loop(Protocol):
    """A training loop as its plug-ins see it."""

    model: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    batches: LengthBucketedBatches
    device: str
    teacher_vectors: torch.Tensor | None
    architecture: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]
    totals: PhaseTimes

    def features(self, part: TokenBatch) -> dict[str, torch.Tensor]: ...

    def loss(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def autocast(self) -> AbstractContextManager: ...

    def build_optimizer(self) -> torch.optim.Optimizer: ...

    def rebatch(self, batches: LengthBucketedBatches, state: TrainState) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...


class EpochHook(Protocol):
    """Changes the model between epochs (a family whose embedding grows has one)."""

    def attach(self, loop: Loop) -> None:
        """Called once the loop exists: a later phase starts with the model as the previous phase left it."""

    def __call__(self, loop: Loop, state: TrainState) -> dict[str, float]:
        """After each whole epoch (after the best checkpoint, before the last); returns metrics to log."""

    def before_loading(self, loop: Loop, architecture: dict[str, Any]) -> None:
        """Give the model the shape of a checkpoint with ``architecture`` that is about to be loaded."""
