"""How many micro-batches a training step needs to fit in memory, planned before the first step.

The caller estimates one step's bytes (the model family's estimate plus what the objective adds); the plan
splits the batch until that fits in what is free (or train.memory_limit_mb), and refuses a model of which
not even one example fits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from embedforge import devices
from embedforge.config import TrainParams
from embedforge.errors import UserError
from embedforge.training import distributed

log = logging.getLogger(__name__)


def available_memory(params: TrainParams, device: str) -> int:
    """What a training step may use: what is free (on the CPU, shared by this machine's training processes; on MPS,
    of the unified memory), capped at train.memory_limit_mb when set."""
    free = devices.free_memory(device)
    if device == "cpu":
        free //= distributed.world().local_size
    limit = params.memory_limit_mb
    return free if limit is None else min(free, int(limit * 2**20))


def plan_micro_batches(
    params: TrainParams,
    estimate: Callable[[int, int], int],
    parts: int,
    longest: int,
    available: int,
    model_kind: str,
    smaller: str,
) -> dict[str, int]:
    """Split each batch into enough micro-batches that ``estimate(sentences, length)`` bytes fit in ``available``.

    ``parts`` sentences per example (anchor, positive, negative) are all held for the
    backward pass; ``longest`` is the longest sequence a batch can have. When a batch
    must be split, the warning names the largest train.batch_size that fits whole; when
    not even one example fits, the error names the ``model_kind`` and what to make ``smaller``.
    """
    micro_batches = params.grad_accum_steps
    while True:
        size = math.ceil(params.batch_size / micro_batches)
        needed = estimate(size * parts, longest)
        if needed <= available or size == 1:
            break
        micro_batches *= 2
    if needed > available:
        raise UserError(
            f"train: one example needs about {needed / 2**20:.0f} MB to train ({model_kind} model) but "
            f"{available / 2**20:.0f} MB is available (train.memory_limit_mb or free memory): use {smaller}"
        )
    if micro_batches != params.grad_accum_steps:
        fits = max((b for b in range(1, params.batch_size) if estimate(b * parts, longest) <= available), default=1)
        log.warning(
            "estimated %.0f MB per step exceeds the %.0f MB available: accumulating %d micro-batches of %d "
            "(train.batch_size: %d would fit in one pass)",
            estimate(math.ceil(params.batch_size / params.grad_accum_steps) * parts, longest) / 2**20,
            available / 2**20,
            micro_batches,
            size,
            fits,
        )
    return {"micro_batches": micro_batches, "estimate_bytes": needed, "available_bytes": int(available)}
