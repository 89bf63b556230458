"""Encoding speed: sentences per second of several models on the same sentences, side by side.

Absolute times on a shared machine are noise; a ratio taken in one process, with
the models' rounds interleaved so that a busy moment hits each of them alike, is
not. Each model is warmed up once (lazy kernels, allocator), then timed over
``rounds`` rounds of the whole list; its best round counts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedforge.errors import DataError

WARMUP_SENTENCES = 64


@dataclass(frozen=True)
class EncodeSpeed:
    sentences: int
    best_seconds: float

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / self.best_seconds


def encode_speed(
    models: Mapping[str, Any], sentences: list[str], batch_size: int = 64, rounds: int = 3
) -> dict[str, EncodeSpeed]:
    """Time ``model.encode(sentences)`` for every model (anything with SentenceTransformer's ``encode``)."""
    if not sentences:
        raise DataError("encode speed: no sentences to encode")
    for model in models.values():
        model.encode(sentences[:WARMUP_SENTENCES], batch_size=batch_size)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.encode(sentences, batch_size=batch_size)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: EncodeSpeed(len(sentences), seconds) for name, seconds in best.items()}
