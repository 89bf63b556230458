"""How many micro-batches a training step needs to fit in memory, planned before the first step.

The model family estimates one step's bytes; the plan splits the batch until that fits in what
is free (or train.memory_limit_mb), and refuses a model of which not even one example fits.
"""

from __future__ import annotations

import logging
import math

import torch

from embedforge import devices
from embedforge.config import Params
from embedforge.errors import UserError
from embedforge.models import MODEL_FAMILIES
from embedforge.training import distributed

log = logging.getLogger(__name__)

LOGIT_TENSORS = 3  # the causal LM keeps logits, their log-softmax and its gradient: 4 bytes x vocabulary per token


def available_memory(cfg: Params, device: str) -> int:
    """What a training step may use: what is free (on the CPU, shared by this machine's training processes; on MPS,
    of the unified memory), capped at train.memory_limit_mb when set."""
    free = devices.free_memory(device)
    if device == "cpu":
        free //= distributed.world().local_size
    limit = cfg.train.memory_limit_mb
    return free if limit is None else min(free, int(limit * 2**20))


def plan_micro_batches(cfg: Params, model: torch.nn.Module, parts: int, longest: int, available: int) -> dict[str, int]:
    """Split each batch into enough micro-batches that the estimated step fits in ``available`` bytes.

    ``parts`` sentences per example (anchor, positive, negative) are all held for the
    backward pass; ``longest`` is the longest sequence a batch can have. When a batch
    must be split, the warning names the largest train.batch_size that fits whole.
    """
    params = cfg.train
    family_estimate = MODEL_FAMILIES[cfg.model.kind].estimate_memory

    def estimate(model: torch.nn.Module, sentences: int, length: int) -> dict[str, int]:
        bytes_ = family_estimate(model, sentences, length)
        if params.objective == "clm":
            bytes_["total"] += LOGIT_TENSORS * 4 * sentences * length * len(model.tokenizer)
        return bytes_

    micro_batches = params.grad_accum_steps
    while True:
        size = math.ceil(params.batch_size / micro_batches)
        needed = estimate(model, size * parts, longest)["total"]
        if needed <= available or size == 1:
            break
        micro_batches *= 2
    if needed > available:
        smaller = (
            "a smaller model.static.dim (the token table is vocabulary x dim, with its gradient and AdamW's two moments)"
            if cfg.model.kind == "static"
            else "a smaller model or tokenize.max_length"
        )
        raise UserError(
            f"train: one example needs about {needed / 2**20:.0f} MB to train ({cfg.model.kind} model) but "
            f"{available / 2**20:.0f} MB is available (train.memory_limit_mb or free memory): use {smaller}"
        )
    if micro_batches != params.grad_accum_steps:
        fits = max(
            (b for b in range(1, params.batch_size) if estimate(model, b * parts, longest)["total"] <= available),
            default=1,
        )
        log.warning(
            "estimated %.0f MB per step exceeds the %.0f MB available: accumulating %d micro-batches of %d "
            "(train.batch_size: %d would fit in one pass)",
            estimate(model, math.ceil(params.batch_size / params.grad_accum_steps) * parts, longest)["total"] / 2**20,
            available / 2**20,
            micro_batches,
            size,
            fits,
        )
    return {"micro_batches": micro_batches, "estimate_bytes": needed, "available_bytes": int(available)}
