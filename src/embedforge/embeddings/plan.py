"""The shard plan of a corpus and the cache directory a run fills by it.

Sentences are hash-partitioned into shards, so each shard can be gathered,
encoded and written on its own, and a killed run resumes by skipping the
shards that are already complete.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedforge.config import PrecomputeParams
from embedforge.embeddings.shards import MANIFEST_NAME, ShardInfo, shard_name
from embedforge.embeddings.spill import SPILL_DIR, spill_partitions
from embedforge.errors import DataError, UserError
from embedforge.files import write_json
from embedforge.models import teacher as teachers


@dataclass(frozen=True)
class Plan:
    """How the corpus splits into shards; every number here is a pure function of the input data."""

    sentences: int
    unique: int
    partitions: int
    content_hashes: list[str]

    @classmethod
    def of(cls, prefixes: np.ndarray, shard_size: int) -> Plan:
        unique = np.unique(prefixes)
        partitions = max(1, math.ceil(len(unique) / shard_size))
        members = unique % np.uint64(partitions)
        grouped = unique[np.argsort(members, kind="stable")]  # each partition's prefixes, still ascending
        bounds = np.r_[0, np.cumsum(np.bincount(members.astype(np.int64), minlength=partitions))]
        hashes = [
            hashlib.blake2b(grouped[bounds[index] : bounds[index + 1]].tobytes()).hexdigest()
            for index in range(partitions)
        ]
        return cls(len(prefixes), len(unique), partitions, hashes)


def check_compatible(directory: Path, info: ShardInfo) -> None:
    """Refuse to mix shards of another teacher, width, dtype or normalisation into this cache."""
    for path in sorted(directory.glob("part-*.parquet")):
        found = ShardInfo.read(path)
        if found is None:
            continue
        differences = [
            f"{name} {getattr(found, name)!r} (now {getattr(info, name)!r})"
            for name in ("teacher_fingerprint", "dim", "dtype", "normalized")
            if getattr(found, name) != getattr(info, name)
        ]
        if differences:
            raise UserError(
                f"{path} was written with a different teacher setup: {', '.join(differences)}. "
                f"Refusing to mix the two; to start this cache afresh, delete it: rm -r {directory}"
            )


@dataclass(frozen=True)
class Target:
    """This run's cache directory and what each shard in it must record to count as finished."""

    directory: Path
    plan: Plan
    teacher: teachers.TeacherRef
    dim: int
    params: PrecomputeParams

    @property
    def spill_dir(self) -> Path:
        return self.directory / SPILL_DIR

    def shard_path(self, partition: int) -> Path:
        return self.directory / shard_name(partition)

    def shard_info(self, partition: int) -> ShardInfo:
        return ShardInfo(
            self.teacher.fingerprint,
            self.dim,
            self.params.dtype,
            self.params.normalize,
            self.plan.partitions,
            partition,
            self.plan.content_hashes[partition],
        )

    def prepare(self) -> set[int]:
        """Ready the directory for this run and return the partitions whose shards are complete.

        The manifest goes first (an unfinished cache must not look finished), foreign shards are refused,
        and shards beyond the plan, half-written ones and spill files of a killed run are removed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST_NAME).unlink(missing_ok=True)
        check_compatible(self.directory, self.shard_info(0))
        for stale in self.directory.glob("part-*.parquet"):
            if int(stale.stem.split("-")[1]) >= self.plan.partitions:
                stale.unlink()
        for half_written in self.directory.glob(".part-*.tmp"):  # a worker killed inside write_shard
            half_written.unlink()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        return {
            partition
            for partition in range(self.plan.partitions)
            if ShardInfo.read(self.shard_path(partition)) == self.shard_info(partition)
        }

    @contextmanager
    def spilled(self, units: Iterable[tuple[str, str]], finished: set[int]) -> Iterator[dict[int, Path]]:
        """The spill file of each unfinished partition, from ``units`` (``(unit_id, text)``), all removed when the
        block ends, however it ends."""
        unfinished = set(range(self.plan.partitions)) - finished
        try:
            yield spill_partitions(units, self.plan.partitions, unfinished, self.spill_dir) if unfinished else {}
        finally:
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    def progress(self) -> tqdm:
        return tqdm(total=self.plan.unique, unit="sent", desc=f"precompute {self.teacher.name}", smoothing=0.1)

    def write_manifest(self, files: list[Path], shards: list[dict]) -> None:
        """Check the row count and write the manifest: last, as it marks the cache finished."""
        plan = self.plan
        if sum(shard["rows"] for shard in shards) != plan.unique:
            raise DataError(
                f"{self.directory}: shards hold {sum(s['rows'] for s in shards)} rows, expected {plan.unique}"
            )
        write_json(
            self.directory / MANIFEST_NAME,
            {
                "teacher": {
                    "spec": self.teacher.spec,
                    "name": self.teacher.name,
                    "fingerprint": self.teacher.fingerprint,
                },
                "dim": self.dim,
                "dtype": self.params.dtype,
                "normalized": self.params.normalize,
                "sentences": plan.sentences,
                "unique_sentences": plan.unique,
                "inputs": [str(path) for path in files],
                "shards": shards,
            },
        )
