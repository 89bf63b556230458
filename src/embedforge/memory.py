"""Peak memory of a block of work: resident set size and, where a GPU is used, device memory.

``ru_maxrss`` is the peak of the whole process, useless when several stages
share one (a Prefect flow); a light sampling thread measures one block instead.
CUDA keeps its own peak; MPS has none, so the thread samples what Metal holds for
the process too: tensors (``current_allocated_memory``) and all the driver holds
(``driver_allocated_memory``). Whether torch and MPS are there is decided once, in
``start``: the sampling thread never looks torch up itself, as another thread may be
importing it at that moment (a half-initialised module has no ``backends`` yet).
"""

from __future__ import annotations

import sys
import threading
from typing import Self

import psutil


def torch_with(backend: str):
    """torch, when this process has imported it and ``backend`` (cuda or mps) is there; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    present = torch.cuda.is_available() if backend == "cuda" else torch.backends.mps.is_available()
    return torch if present else None


class PeakMemory:
    """Samples this process's RSS (and MPS memory) every ``interval_s`` and keeps the maximum."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_rss_bytes = 0
        self.peak_cuda_bytes: int | None = None
        self.peak_mps_bytes: int | None = None
        self.peak_mps_driver_bytes: int | None = None
        self._process = psutil.Process()
        self._mps_torch = None  # torch, when it was imported before start() and MPS is there
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            self._read()
            if self._stop.wait(self.interval_s):
                return

    def _read(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)
        torch = self._mps_torch
        if torch is not None:
            self.peak_mps_bytes = max(self.peak_mps_bytes or 0, torch.mps.current_allocated_memory())
            self.peak_mps_driver_bytes = max(self.peak_mps_driver_bytes or 0, torch.mps.driver_allocated_memory())

    def start(self) -> PeakMemory:
        self._mps_torch = torch_with("mps")
        torch = torch_with("cuda")
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read()
        torch = torch_with("cuda")
        if torch is not None:
            self.peak_cuda_bytes = torch.cuda.max_memory_allocated()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def metrics(self) -> dict[str, float]:
        found = {"peak_rss_mb": self.peak_rss_bytes / 2**20}
        for name, value in (
            ("peak_cuda_mb", self.peak_cuda_bytes),
            ("peak_mps_mb", self.peak_mps_bytes),
            ("peak_mps_driver_mb", self.peak_mps_driver_bytes),
        ):
            if value is not None:
                found[name] = value / 2**20
        return found


def autograd_saved_bytes(model, features: dict) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward of ``features`` in train mode,
    the model's own tensors (weights, buffers) left out.

    Counted through saved-tensor hooks, so the figure is the same on every run (sampling RSS is not: another
    thread's allocation can land in the window). A checkpointed region keeps its input itself, outside this
    count, and recomputes the rest in backward.
    """
    import torch  # loaded by whoever measures, not by every user of this module

    own = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(features)
    return sum(saved.values())
