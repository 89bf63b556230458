"""One shard of the embedding cache: its name, what it was built from, its writer and its line in the manifest.

The build facts sit in the shard's parquet footer, so an interrupted run can tell
finished shards from stale or foreign ones without the manifest, which comes last.

Shard format 2 stores every column plain: a sentence's id and text are unique in its cache and teacher vectors
never repeat, so parquet's default dictionary encoding only added a dictionary page (7% at float16, 30% at
float32 on 384-dim vectors). Format 1 shards, written before, read the same and are still reused; the manifest
names each shard's format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.files import atomic_path, sha256_file

MANIFEST_NAME = "manifest.json"
SHARD_METADATA_KEY = b"embedforge"
SHARD_FORMAT_KEY = b"embedforge_format"  # absent in format 1 shards
SHARD_FORMAT = 2
ROW_GROUP_ROWS = 1024
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardInfo:
    """What a shard was built from; a shard is reusable only if all of it matches."""

    teacher_fingerprint: str
    dim: int
    dtype: str
    normalized: bool
    partitions: int
    partition: int
    content_hash: str

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def read(cls, path: Path) -> ShardInfo | None:
        """The info stored in a shard's parquet footer, or None if the file is not a readable shard."""
        try:
            metadata = pq.read_schema(path).metadata or {}
            return cls(**json.loads(metadata[SHARD_METADATA_KEY]))
        except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
            return None


def write_shard(path: Path, ids: list[str], texts: list[str], vectors: np.ndarray, info: ShardInfo) -> int:
    """Write one shard sorted by sentence id, atomically; return its size in bytes."""
    order = np.argsort(np.asarray(ids))
    dtype = ARROW_DTYPES[info.dtype]
    values = pa.array(vectors[order].astype(info.dtype).reshape(-1), type=dtype)
    table = pa.table(
        {
            "sentence_id": pa.array([ids[i] for i in order], pa.string()),
            "text": pa.array([texts[i] for i in order], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, info.dim),
        }
    ).replace_schema_metadata({SHARD_METADATA_KEY: info.encode(), SHARD_FORMAT_KEY: str(SHARD_FORMAT).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd", use_dictionary=False)
    return path.stat().st_size


def shard_record(path: Path) -> dict:
    """A finished shard as the manifest lists it: file name, rows, sha256 and format, read from the file itself."""
    metadata = pq.ParquetFile(path).metadata
    shard_format = int((metadata.metadata or {}).get(SHARD_FORMAT_KEY, b"1"))
    return {"file": path.name, "rows": metadata.num_rows, "sha256": sha256_file(path), "format": shard_format}
