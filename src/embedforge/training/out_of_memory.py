"""Running out of memory, on this rank or another: what the loop backs off from instead of failing."""

from __future__ import annotations

import logging
import math

import torch

from embedforge.errors import UserError
from embedforge.training.checkpoint import TrainState

log = logging.getLogger("embedforge.training.trainer")

OOM_MESSAGES = ("out of memory", "can't allocate memory")


class OutOfMemoryElsewhere(RuntimeError):
    """Another rank ran out of memory: every rank backs off together."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError | OutOfMemoryElsewhere) or (
        isinstance(error, RuntimeError) and any(message in str(error) for message in OOM_MESSAGES)
    )


def halve_micro_batches(state: TrainState, batch_examples: int, ranks: int, error: BaseException) -> None:
    """Double ``state.micro_batches`` (halving each micro-batch of this rank's share of ``batch_examples``), or
    refuse when a micro-batch is already one example."""
    largest = math.ceil(batch_examples / ranks / state.micro_batches)
    if largest <= 1:
        raise UserError(
            f"train: out of memory at step {state.step + 1} even with one example per micro-batch "
            f"({str(error).splitlines()[0]}); use a smaller model or tokenize.max_length"
        ) from None
    state.micro_batches *= 2
    log.warning(
        "out of memory at step %d: micro-batch %d -> %d examples, accumulating %d micro-batches per step",
        state.step + 1,
        largest,
        math.ceil(batch_examples / ranks / state.micro_batches),
        state.micro_batches,
    )
