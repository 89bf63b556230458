"""The reader of a finished embedding cache: vectors by sentence id or text, without loading it all."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from embedforge.data.sentences import fixed_ids, normalize_text, search_sorted, sentence_id
from embedforge.embeddings.shards import MANIFEST_NAME, ROW_GROUP_ROWS
from embedforge.errors import UserError


class EmbeddingCache:
    """Lookup from sentence id or text to its teacher vector, holding only ids and a few row groups in memory.

    The id index costs 24 bytes a sentence and is built on the first lookup, so a reader
    of whole shards never pays for it; vectors are read from the memory-mapped shards one
    row group at a time, keeping the ``cached_row_groups`` most recent.
    """

    def __init__(self, directory: str | Path, cached_row_groups: int = 64):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise UserError(
                f"{self.directory}: no finished embedding cache here ({MANIFEST_NAME} missing): "
                f"run `embedforge precompute`"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        self.dim: int = self.manifest["dim"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.rows: int = sum(shard["rows"] for shard in self.manifest["shards"])
        self.files = [self.directory / shard["file"] for shard in self.manifest["shards"]]
        self._row_groups: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_row_groups = cached_row_groups
        self._keys: np.ndarray | None = None

    def _build_index(self) -> None:
        keys, shards, rows = [], [], []
        for index, path in enumerate(self.files):
            ids = pq.read_table(path, columns=["sentence_id"]).column(0).to_numpy(zero_copy_only=False)
            keys.append(np.array([bytes.fromhex(i) for i in ids], dtype="S16"))
            shards.append(np.full(len(ids), index, dtype=np.int32))
            rows.append(np.arange(len(ids), dtype=np.int32))
        order = np.argsort(np.concatenate(keys)) if keys else np.array([], dtype=np.int64)
        self._keys = np.concatenate(keys)[order] if keys else np.array([], dtype="S16")
        self._shard = np.concatenate(shards)[order] if shards else np.array([], dtype=np.int32)
        self._row = np.concatenate(rows)[order] if rows else np.array([], dtype=np.int32)

    def __len__(self) -> int:
        return self.rows

    def __contains__(self, identifier: str) -> bool:
        return self._positions([identifier], missing_ok=True)[0] >= 0

    def _positions(self, ids: list[str], missing_ok: bool = False) -> np.ndarray:
        if self._keys is None:
            self._build_index()
        positions, found = search_sorted(self._keys, np.array([bytes.fromhex(i) for i in ids], dtype="S16"))
        if not missing_ok and not found.all():
            missing = ids[int(np.argmin(found))]
            raise KeyError(f"sentence id {missing} is not in the embedding cache {self.directory}")
        return np.where(found, positions, -1)

    def _row_group(self, shard: int, group: int) -> np.ndarray:
        key = (shard, group)
        if key in self._row_groups:
            self._row_groups.move_to_end(key)
            return self._row_groups[key]
        file = pq.ParquetFile(self.files[shard], memory_map=True)
        column = file.read_row_group(group, columns=["embedding"]).column(0).combine_chunks()
        vectors = column.values.to_numpy().reshape(-1, self.dim)
        self._row_groups[key] = vectors
        if len(self._row_groups) > self._cached_row_groups:
            self._row_groups.popitem(last=False)
        return vectors

    def vectors(self, ids: list[str]) -> np.ndarray:
        """float32 vectors for ``ids``, in order; KeyError names the first id that is not cached."""
        positions = self._positions(ids)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for out_row, position in enumerate(positions):
            shard, row = int(self._shard[position]), int(self._row[position])
            out[out_row] = self._row_group(shard, row // ROW_GROUP_ROWS)[row % ROW_GROUP_ROWS]
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        """The teacher vectors of ``texts`` as the teacher would give them, read from the cache."""
        return self.vectors([sentence_id(normalize_text(text)) for text in texts])

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(``ID_DTYPE`` ids, vectors as stored: float16 or float32) shard by shard: the whole cache in bounded
        memory, without a Python string or a float32 copy per sentence."""
        for path in self.files:
            table = pq.read_table(path, columns=["sentence_id", "embedding"], memory_map=True)
            vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(-1, self.dim)
            yield fixed_ids(table.column("sentence_id").combine_chunks()), vectors

    def matrix(self) -> np.ndarray:
        """Every vector as stored (float16 or float32), in shard order: a corpus to search, filled shard by shard
        into one array, so memory holds the cache once and one shard besides."""
        out = np.empty((self.rows, self.dim), dtype=self.dtype)
        start = 0
        for _, vectors in self.iter_shards():
            out[start : start + len(vectors)] = vectors
            start += len(vectors)
        return out


def load(directory: str | Path) -> EmbeddingCache:
    return EmbeddingCache(directory)
