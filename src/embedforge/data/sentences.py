"""Sentences as the unit of caching: one normalised text, one stable id, wherever it occurs.

SNLI premises repeat about three times and the same sentence can appear in
several datasets; every stage that keys on a sentence (precomputed teacher
embeddings, token ids) uses ``sentence_id`` so the teacher sees each text once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedforge.data.schema import TEXT_COLUMNS, TITLE_COLUMN, raw_split_path
from embedforge.data.text_ids import id_prefix, normalize_text, sentence_id
from embedforge.errors import DataError
from embedforge.files import parquet_batches, stream_parquet
from embedforge.paths import RAW_DIR

READ_BATCH_ROWS = 65_536
ID_DTYPE = "S32"  # a sentence id is 32 hex characters
BATCH_CHARS = 1 << 21  # of text a batch of texts holds at most: documents are cut and tokenized a few at a time


def document_text(title: str | None, text: str) -> str:
    """A document's text as it is embedded: its title, a space, then its text; the text alone without a title
    (null or blank).

    Normalised after (``normalize_text``) as every text is. Precompute and tokenize read documents through
    ``iter_sentences``, which folds titles in with this; evaluation embeds documents the same way.
    """
    return f"{title} {text}" if isinstance(title, str) and title.strip() else text


def partition_of(identifier: str, partitions: int) -> int:
    """Which shard a sentence belongs to: a pure function of its id, so every shard can be rebuilt alone."""
    return id_prefix(identifier) % partitions


def search_sorted(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each ``wanted`` id in ``sorted_ids`` (meaningless where absent) and whether it is there.

    The id indexes of the embedding cache and of the token store are sorted arrays
    searched this way: 16 to 32 bytes a sentence instead of a dict entry apiece.
    """
    if not len(sorted_ids):
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    rows = np.searchsorted(sorted_ids, wanted).clip(max=len(sorted_ids) - 1)
    return rows, sorted_ids[rows] == wanted


def fixed_ids(column: pa.Array) -> np.ndarray:
    """Sentence ids as ``ID_DTYPE`` bytes, straight from Arrow's buffers, without a Python string each."""
    fixed = column.cast(pa.binary(32))
    return np.frombuffer(fixed.buffers()[1], dtype=ID_DTYPE, count=len(fixed), offset=32 * fixed.offset).copy()


def id_strings(ids: np.ndarray) -> list[str]:
    """``ID_DTYPE`` ids as Python strings, made straight from their bytes."""
    text = ids.tobytes().decode("ascii")
    return [text[start : start + 32] for start in range(0, len(text), 32)]


def split_files(datasets: list[str], splits: list[str], root: Path = RAW_DIR) -> list[Path]:
    """The raw parquet files of the chosen datasets and splits that exist; at least one must."""
    files = [raw_split_path(dataset, split, root) for dataset in datasets for split in splits]
    present = [path for path in files if path.is_file()]
    if not present:
        wanted = ", ".join(str(path) for path in files)
        raise DataError(f"none of the raw splits exist ({wanted}): run `embedforge download` first")
    return present


def iter_sentences(files: list[Path]) -> Iterator[str]:
    """Every non-empty text of ``files`` (pairs' both sides, a corpus' texts, documents with their titles folded in
    by ``document_text``), normalised, streamed in batches."""
    for path in files:
        parquet = stream_parquet(path)
        names = parquet.schema_arrow.names
        columns = [name for name in TEXT_COLUMNS if name in names]
        titled = TITLE_COLUMN in names and "text" in names  # a documents split: one text a row, its title first
        read = [*columns, TITLE_COLUMN] if titled else columns
        for batch in parquet_batches(parquet, READ_BATCH_ROWS, read):
            for text in batch_texts(batch, columns, titled):
                if text and (normalized := normalize_text(text)):
                    yield normalized


def batch_texts(batch: pa.RecordBatch, columns: list[str], titled: bool) -> Iterator[str | None]:
    """A batch's texts, column by column; a documents batch's row by row, each title folded into its text."""
    if titled:
        titles, texts = batch.column(TITLE_COLUMN).to_pylist(), batch.column("text").to_pylist()
        for title, text in zip(titles, texts, strict=True):
            yield document_text(title, text) if text else None
        return
    for name in columns:
        yield from batch.column(name).to_pylist()


def id_prefixes(files: list[Path]) -> np.ndarray:
    """``id_prefix`` of every sentence of ``files``, 8 bytes a sentence."""
    return np.fromiter((id_prefix(sentence_id(text)) for text in iter_sentences(files)), dtype=np.uint64)


def text_batches(texts: Iterable[str], max_texts: int) -> Iterator[list[str]]:
    """``texts`` in lists of at most ``max_texts`` texts and about ``BATCH_CHARS`` characters, in order: what a
    batch costs to cut and tokenize goes with its characters, so long documents come fewer at a time than
    sentences (whose batches stay ``max_texts`` long)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if len(batch) == max_texts or size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
