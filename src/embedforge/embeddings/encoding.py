"""The teacher's pass over one partition, and the tally of a run's shards that both executors keep.

Within a shard, sentences are encoded in length order to cut padding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedforge.config import PrecomputeParams
from embedforge.embeddings.shards import ShardInfo, shard_record, write_shard
from embedforge.embeddings.spill import gather_partition
from embedforge.errors import DataError

BatchHook = Callable[[int], None]


def encode_partition(
    model,
    ids: list[str],
    texts: list[str],
    batch_size: int,
    normalize: bool,
    progress: tqdm,
    on_batch: BatchHook | None,
) -> np.ndarray:
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for batch_index, start in enumerate(range(0, len(texts), batch_size)):
        batch = texts[start : start + batch_size]
        vectors[start : start + len(batch)] = model.encode(
            batch, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True, show_progress_bar=False
        )
        progress.update(len(batch))
        if on_batch is not None:
            on_batch(batch_index)
    broken = ~np.isfinite(vectors).all(axis=1)
    if broken.any():
        row = int(np.argmax(broken))
        raise DataError(
            f"the teacher produced a non-finite (NaN/inf) embedding for sentence {ids[row]} {texts[row]!r}; "
            f"check the teacher's weights and the precompute.precision setting"
        )
    return vectors


def encode_shard(
    model,
    spill: Path,
    path: Path,
    info: ShardInfo,
    params: PrecomputeParams,
    progress: tqdm,
    on_batch: BatchHook | None,
) -> tuple[dict, float]:
    """Gather one partition from its spill file, encode it and write its shard atomically; (its manifest record,
    encode seconds)."""
    ids, texts = gather_partition(spill, model.tokenizer)
    started = time.perf_counter()
    vectors = encode_partition(model, ids, texts, params.batch_size, params.normalize, progress, on_batch)
    seconds = time.perf_counter() - started
    write_shard(path, ids, texts, vectors, info)
    spill.unlink()
    return shard_record(path), seconds


@dataclass
class Outcome:
    """What an executor leaves for the manifest and the metrics."""

    used: set[tuple[str, str]]  # (device, backend) of every teacher that was loaded to encode
    workers: int
    records: dict[int, dict] = field(default_factory=dict)  # each shard's manifest record, by partition
    encoded: int = 0  # sentences encoded by this run, reused shards left out
    encode_seconds: float = 0.0  # time inside the teacher, summed over shards

    def reuse(self, partition: int, path: Path) -> int:
        """Count in a shard an earlier run finished; its rows."""
        self.records[partition] = shard_record(path)
        return self.records[partition]["rows"]

    def add(self, partition: int, record: dict, seconds: float, device_backend: tuple[str, str]) -> None:
        """Count in a shard this run encoded, in ``seconds``, by a teacher on ``device_backend``."""
        self.records[partition] = record
        self.encoded += record["rows"]
        self.encode_seconds += seconds
        self.used.add(device_backend)

    @property
    def shards(self) -> list[dict]:
        """The records in partition order, as the manifest lists them."""
        return [self.records[partition] for partition in sorted(self.records)]
