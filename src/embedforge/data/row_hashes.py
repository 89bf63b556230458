"""Rows as 64-bit hashes of their texts, streamed from a raw split: what the checks that span rows compare.

Duplicates and ids are compared within a split, leakage against the train split; hashing each row once keeps
a split of millions of rows out of memory while its repeats are found.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.data.schema import row_keys
from embedforge.errors import DataError
from embedforge.files import parquet_batches, stream_parquet

# A row's id in each kind's schema, shown with every failing row: the source's own row id, e.g. train-17.
ID_COLUMNS = ["pair_id", "text_id", "id", "query_id"]


def row_hashes(frame: pd.DataFrame, columns: list[str], exact: bool) -> np.ndarray:
    """A 64-bit hash of each row's texts: as written (``exact``), or as ``row_keys`` compares them.

    Missing columns, null texts and non-text values are the column expectations' to report, so they must
    not crash this nor count as repeats or leaks: texts are cast to strings, and a row with a null text
    (every row, when a column is missing) hashes as its position in the split, which no other row has.
    """
    positions = frame.index.to_numpy(dtype=np.uint64)
    if any(column not in frame for column in columns):
        return positions
    texts = frame[columns].astype("str")
    null = texts.isna().any(axis=1).to_numpy()
    filled = texts.fillna("")
    keys = filled.agg("\t".join, axis=1) if exact else row_keys(filled)
    hashes = pd.util.hash_pandas_object(keys.astype("str"), index=False).to_numpy(dtype=np.uint64, copy=True)
    hashes[null] = positions[null]
    return hashes


def unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: cannot read parquet ({exc}): run `embedforge download` again")


def open_split(path: Path) -> pq.ParquetFile:
    try:
        return stream_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise unreadable(path, exc) from None


def read_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """A raw split in frames of ``batch_rows`` rows, indexed by their rows' positions in the
    split; an empty split gives one empty frame, so its expectations still run."""
    parquet = open_split(path)
    try:
        start = 0
        for batch in parquet_batches(parquet, batch_rows):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
        if start == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise unreadable(path, exc) from None


def split_hashes(path: Path, columns: list[str], exact: bool, batch_rows: int) -> np.ndarray:
    """``row_hashes`` of every row of a raw split, streamed into one array: 8 bytes a row, never held twice."""
    return split_hash_columns(path, [columns], exact, batch_rows)[0]


def split_hash_columns(path: Path, column_sets: list[list[str]], exact: bool, batch_rows: int) -> list[np.ndarray]:
    """``row_hashes`` of every row for each set of columns, in one pass over the split."""
    rows = open_split(path).metadata.num_rows
    hashes = [np.empty(rows, dtype=np.uint64) for _ in column_sets]
    for frame in read_batches(path, batch_rows):
        for out, columns in zip(hashes, column_sets, strict=True):
            out[frame.index.start : frame.index.stop] = row_hashes(frame, columns, exact)
    return hashes


def repeats_in_split(path: Path, columns: list[str], batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of a raw split, streamed once: does its texts' exact ``row_hashes`` occur again, and
    does its id (whichever of ``ID_COLUMNS`` it has)?"""
    names = open_split(path).schema_arrow.names
    id_column = next((c for c in ID_COLUMNS if c in names), ID_COLUMNS[0])
    texts, ids = split_hash_columns(path, [columns, [id_column]], exact=True, batch_rows=batch_rows)
    repeated_texts = repeated_rows(texts)
    del texts
    return repeated_texts, repeated_rows(ids)


def repeated_rows(hashes: np.ndarray) -> np.ndarray:
    """True for every row whose hash occurs more than once: a sort, about 17 bytes a row beside the hashes."""
    order = np.argsort(hashes)
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    del ordered
    repeated = np.zeros(len(hashes), dtype=bool)
    repeated[1:] = same
    repeated[:-1] |= same
    out = np.empty(len(hashes), dtype=bool)
    out[order] = repeated
    return out


def in_sorted(hashes: np.ndarray, sorted_hashes: np.ndarray) -> np.ndarray:
    """Whether each hash is in ``sorted_hashes`` (sorted, distinct), by binary search: no copy of the big side."""
    if not len(sorted_hashes):
        return np.zeros(len(hashes), dtype=bool)
    positions = np.searchsorted(sorted_hashes, hashes).clip(max=len(sorted_hashes) - 1)
    return sorted_hashes[positions] == hashes
