"""The token files the tokenize stage writes, read as Arrow without a Python object per sentence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedforge.files import stream_parquet

ID_DTYPE = "S32"  # a sentence id is 32 hex characters


def token_batches(token_file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The first chunk of every sentence of a token file, a row group at a time: memory holds one group."""
    for batch in stream_parquet(token_file).iter_batches(columns=[*columns, "chunk"]):
        yield batch.filter(pc.equal(batch["chunk"], 0))


def fixed_ids(column: pa.Array) -> np.ndarray:
    """Sentence ids as ``ID_DTYPE`` bytes, straight from Arrow's buffers, without a Python string each."""
    fixed = column.cast(pa.binary(32))
    return np.frombuffer(fixed.buffers()[1], dtype=ID_DTYPE, count=len(fixed), offset=32 * fixed.offset).copy()


def id_strings(ids: np.ndarray) -> list[str]:
    """``ID_DTYPE`` ids as Python strings, made straight from their bytes."""
    text = ids.tobytes().decode("ascii")
    return [text[start : start + 32] for start in range(0, len(text), 32)]
