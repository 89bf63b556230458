"""Where a stage's tensors go: a CUDA GPU, Apple Silicon's GPU (MPS), or the CPU; the one place that knows how
each is chosen, synchronised, emptied and asked for free memory.

``auto`` prefers CUDA, then MPS, then the CPU. Operations MPS lacks run on the CPU
instead (``PYTORCH_ENABLE_MPS_FALLBACK``, set when this package is imported), and
torch warns once for each.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil

from embedforge.errors import UserError

log = logging.getLogger(__name__)

NAMES = {"cuda": "CUDA GPU", "mps": "Apple Silicon GPU (MPS)", "cpu": "CPU"}
ACCELERATORS = ("cuda", "mps")


def available() -> list[str]:
    """The kinds of device this machine has, in the order ``auto`` prefers them."""
    import torch

    found = [kind for kind, present in (("cuda", torch.cuda.is_available()), ("mps", mps_available())) if present]
    return [*found, "cpu"]


def mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def kind(device: str) -> str:
    """``cuda`` for ``cuda:1``: the kind of device, whatever its index."""
    return device.partition(":")[0]


def pick(requested: str, key: str) -> str:
    """The device ``requested`` under ``key`` (e.g. ``train.device``) stands for on this machine.

    ``auto`` is the first of cuda, mps and cpu that is here, and says so in the log; a
    named device that is not here fails, naming the key and what the machine has.
    """
    found = available()
    if requested == "auto":
        log.info("%s: auto picked %s (this machine has: %s)", key, found[0], ", ".join(found))
        return found[0]
    if kind(requested) not in found:
        raise UserError(
            f"{key} is {requested!r} but this machine has no {NAMES[kind(requested)]}; it has: {', '.join(found)}. "
            f"Use {key}: auto"
        )
    if requested.startswith("cuda:"):
        import torch

        count = torch.cuda.device_count()
        if int(requested.removeprefix("cuda:")) >= count:
            raise UserError(
                f"{key} is {requested!r} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    return requested


def half_precision(precision: str, device: str) -> Any:
    """The dtype of mixed precision on ``device`` (None: fp32). ``auto`` is fp32 on the CPU and bf16 on a GPU
    that has it, else fp16, with a warning when bf16 was asked for and is missing."""
    import torch

    if precision == "fp32" or (precision == "auto" and device == "cpu"):
        return None
    if precision == "fp16":
        return torch.float16
    if not bf16_supported(device):
        log.warning("%s has no bf16: fp16 instead (with a gradient scaler when training)", device)
        return torch.float16
    return torch.bfloat16


def bf16_supported(device: str) -> bool:
    import torch

    if kind(device) == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind(device) == "mps":
        return torch.backends.mps.is_macos_or_newer(14, 0)
    return True


def synchronize(device: str) -> None:
    """Wait for the work queued on an accelerator (nothing to wait for on the CPU)."""
    import torch

    if kind(device) == "cuda":
        torch.cuda.synchronize()
    elif kind(device) == "mps":
        torch.mps.synchronize()


def empty_cache(device: str) -> None:
    """Hand an accelerator's cached, unused blocks back, e.g. after running out of memory."""
    import torch

    if kind(device) == "cuda":
        torch.cuda.empty_cache()
    elif kind(device) == "mps":
        torch.mps.empty_cache()


def free_memory(device: str) -> int:
    """Bytes a new allocation on ``device`` may take: what the GPU has free, for MPS what Metal recommends of the
    unified memory less what the process holds, and on the CPU what the host has available."""
    import torch

    if kind(device) == "cuda":
        return torch.cuda.mem_get_info()[0]
    if kind(device) == "mps":
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return psutil.virtual_memory().available
