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

from embedforge.data.schema import row_keys
from embedforge.errors import DataError
from embedforge.files import stream_parquet

ID_COLUMNS = ["pair_id", "text_id"]  # shown with every failing row: the source's own row id, e.g. train-17


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


def read_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """A raw split in frames of ``batch_rows`` rows, indexed by their rows' positions in the
    split; an empty split gives one empty frame, so its expectations still run."""
    try:
        parquet = stream_parquet(path)
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
        if start == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read parquet ({exc}): run `embedforge download` again") from None


def split_hashes(path: Path, columns: list[str], exact: bool, batch_rows: int) -> np.ndarray:
    """``row_hashes`` of every row of a raw split, streamed."""
    parts = [row_hashes(frame, columns, exact) for frame in read_batches(path, batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def repeats_in_split(path: Path, columns: list[str], batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of a raw split, streamed once: does its texts' exact ``row_hashes`` occur again, and
    does its id (``pair_id`` or ``text_id``, whichever it has)?"""
    texts, ids = [], []
    for frame in read_batches(path, batch_rows):
        texts.append(row_hashes(frame, columns, exact=True))
        ids.append(row_hashes(frame, [next((c for c in ID_COLUMNS if c in frame), ID_COLUMNS[0])], exact=True))
    return repeated_rows(np.concatenate(texts)), repeated_rows(np.concatenate(ids))


def repeated_rows(hashes: np.ndarray) -> np.ndarray:
    """True for every row whose hash occurs more than once."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return counts[inverse] > 1
