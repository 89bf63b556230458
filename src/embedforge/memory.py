"""Peak memory of a block of work: resident set size and, where CUDA is used, device memory.

``ru_maxrss`` is the peak of the whole process, useless when several stages
share one (a Prefect flow); a light sampling thread measures one block instead.
"""

from __future__ import annotations

import sys
import threading
from typing import Self

import psutil


class PeakMemory:
    """Samples this process's RSS every ``interval_s`` and keeps the maximum."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_rss_bytes = 0
        self.peak_cuda_bytes: int | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> PeakMemory:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            self.peak_cuda_bytes = torch.cuda.max_memory_allocated()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def metrics(self) -> dict[str, float]:
        found = {"peak_rss_mb": self.peak_rss_bytes / 2**20}
        if self.peak_cuda_bytes is not None:
            found["peak_cuda_mb"] = self.peak_cuda_bytes / 2**20
        return found
