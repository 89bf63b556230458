"""Training on several processes: the world, ``torch.distributed``'s connection and the collectives it trains with.

A world of ``train.nnodes`` x ``train.nproc_per_node`` processes trains data-parallel:
every rank holds the whole model, takes its slice of every global batch, and the
gradients are summed across ranks once per step, so a step sees the same examples
and the same gradient whatever the world size. ``stages.train_launch`` starts the
processes; a process joins the world its launcher (or ``torchrun``) started when
``LOCAL_RANK`` and ``WORLD_SIZE`` are set.

Rank 0 alone writes files and talks to MLflow; the other ranks log nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from embedforge.config import TrainParams
from embedforge.errors import UserError
from embedforge.training.batches import LengthBucketedBatches, PairBatch

log = logging.getLogger(__name__)

BUCKET_ELEMENTS = 2**22  # gradients are summed in buckets of at most this many values (16 MB of float32)
TIMEOUT = timedelta(minutes=30)  # a collective waiting this long means a rank died: the group fails


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of a world of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def any(self, flag: bool, device: str) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


ONE_PROCESS = World()
_world = ONE_PROCESS


def world() -> World:
    return _world


def started_by_torchrun() -> bool:
    """Whether this process is a worker of a world torchrun (or our own launch) started."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def wanted_size(params: TrainParams) -> int:
    return params.nnodes * params.nproc_per_node


def pick_backend(params: TrainParams, device: str) -> str:
    """NCCL on CUDA, gloo on CPU; ``train.backend`` may force one, and NCCL without CUDA is refused."""
    if params.backend == "nccl" and device != "cuda":
        raise UserError(
            f"train.backend is nccl but training runs on {device} (train.device: {params.device}); NCCL needs CUDA "
            f"GPUs: use train.backend: gloo (or auto)"
        )
    if params.backend != "auto":
        return params.backend
    return "nccl" if device == "cuda" else "gloo"


def check_devices(params: TrainParams, device: str) -> None:
    """On CUDA each local process takes one GPU: refuse more processes than GPUs before anything starts. A Mac has
    one GPU, which gloo cannot reach: MPS trains in one process."""
    if device == "mps" and wanted_size(params) > 1:
        raise UserError(
            f"train.nproc_per_node is {params.nproc_per_node} (train.nnodes {params.nnodes}) but training runs on "
            f"mps: one Apple Silicon GPU trains in one process; use train.nproc_per_node: 1, or train.device: cpu"
        )
    if device == "cuda" and params.nproc_per_node > torch.cuda.device_count():
        raise UserError(
            f"train.nproc_per_node is {params.nproc_per_node} but this machine has {torch.cuda.device_count()} "
            f"CUDA device(s): one process per GPU"
        )


def join(params: TrainParams, device: str) -> tuple[World, str]:
    """Connect this worker to its world (a world of one when not started by torchrun); return it and the device
    it trains on (on CUDA, the GPU of its local rank becomes the current one)."""
    global _world
    if not started_by_torchrun():
        return _world, device
    backend = pick_backend(params, device)
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:  # the machine's cores shared out, not each process taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    _world = World(
        rank=dist.get_rank(),
        local_rank=local_rank,
        size=dist.get_world_size(),
        local_size=local_size,
    )
    return _world, device


def leave() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = ONE_PROCESS


def sum_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks in place (a missing gradient counts as zeros).

    Each rank weighted its losses by its share of the global batch, so the sum is the
    whole batch's gradient. Buckets of flattened gradients keep the number of
    collectives small, as DistributedDataParallel's buckets do.
    """
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    bucket: list[torch.Tensor] = []
    size = 0
    for parameter in parameters:
        bucket.append(parameter.grad)
        size += parameter.grad.numel()
        if size >= BUCKET_ELEMENTS:
            _sum_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _sum_bucket(bucket)


def _sum_bucket(gradients: list[torch.Tensor]) -> None:
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    dist.all_reduce(flat)
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


def gather_rows(local: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Every rank's first ``count`` rows of ``local``, in rank order, with gradients flowing back to the rank that
    computed them; and where this rank's rows start in the result.

    Ranks may hold different numbers of rows (a global batch rarely splits evenly):
    they are padded to the largest for the all-gather and trimmed after.
    """
    from torch.distributed._functional_collectives import all_gather_single  # differentiable: backward reduces

    counts = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([count], device=local.device))
    sizes = [int(size) for size in counts]
    widest = max(sizes)
    if widest == 0:  # every rank agrees there is nothing to gather
        return local[:0], 0
    padded = torch.nn.functional.pad(local[:count], (0, 0, 0, widest - count))
    gathered = all_gather_single(padded, gather_dim=0, group=dist.group.WORLD).split(widest)
    rank = dist.get_rank()
    return torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)]), sum(sizes[:rank])


def rank_share(indices: list[int], world: World) -> tuple[list[int], bool]:
    """This rank's contiguous slice of a global batch, and whether it counts.

    A rank left without examples (a global batch smaller than the world) trains on the
    batch's first example with weight 0, so every rank still runs the same collectives.
    """
    if not world.distributed:
        return indices, True
    mine = np.array_split(np.asarray(indices), world.size)[world.rank]
    return (mine.tolist(), True) if len(mine) else (indices[:1], False)


def rank_micro_batches(
    batches: LengthBucketedBatches, indices: list[int], micro_batches: int, world: World
) -> list[PairBatch]:
    """This rank's slice of a global batch as micro-batches; every rank gets the same number of them (at most
    ``micro_batches``, and none empty), as their collectives pair up one micro-batch at a time."""
    share, _ = rank_share(indices, world)
    pieces = micro_batch_count(indices, micro_batches, world)
    return [batches.build(part.tolist()) for part in np.array_split(np.asarray(share), pieces)]


def micro_batch_count(indices: list[int], micro_batches: int, world: World) -> int:
    return max(1, min(micro_batches, len(indices) // world.size))


def gathered_candidates(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None, counts: bool
) -> tuple[torch.Tensor, ...]:
    """InfoNCE's inputs over the global batch: this rank's anchors, every rank's positives and hard negatives (with
    gradients back to the rank that embedded them), and each anchor's own positive among them."""
    mine = len(anchors) if counts else 0
    all_positives, offset = gather_rows(positives, mine)
    own_negatives = negatives if negatives is not None else positives[:0]
    all_negatives, _ = gather_rows(own_negatives, len(own_negatives) if counts else 0)
    if counts:
        labels = offset + torch.arange(len(anchors), device=anchors.device)
    else:  # weight 0: any valid target keeps the loss finite
        labels = torch.zeros(len(anchors), dtype=torch.long, device=anchors.device)
    return anchors, all_positives, all_negatives, labels


def summed_over_ranks(
    loss: torch.Tensor, parts: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The global batch's loss and parts: each rank's are weighted by its share, so they add up."""
    values = torch.stack([loss, *parts.values()]).float()
    dist.all_reduce(values)
    return values[0], dict(zip(parts, values[1:], strict=True))
