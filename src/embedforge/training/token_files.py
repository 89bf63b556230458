"""The token files the tokenize stage writes, read as Arrow without a Python object per sentence, and the
``TokenStore`` that holds their token ids for training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from embedforge.data.sentences import ID_DTYPE, fixed_ids, id_strings, search_sorted
from embedforge.errors import DataError
from embedforge.files import stream_parquet

ROW_DTYPE = np.int32  # a TokenStore row: two billion sentences is far past one machine
NO_ROW = -1  # an example's missing positive or hard negative


def token_batches(token_file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The first chunk of every sentence of a token file, a row group at a time: memory holds one group."""
    for batch in stream_parquet(token_file).iter_batches(columns=[*columns, "chunk"]):
        yield batch.filter(pc.equal(batch["chunk"], 0))


def token_file_of(tokens_dir: Path, path: Path) -> Path:
    """The token file of the split ``path`` names (``<dataset>/<split>.parquet``, raw or token path); it must exist."""
    token_file = tokens_dir / path.parent.name / path.name
    if not token_file.is_file():
        raise DataError(f"{token_file}: no token ids for this split; run `embedforge tokenize` first")
    return token_file


class TokenStore:
    """Chunk-0 token ids of every sentence, as one flat int32 array indexed by sorted sentence ids.

    A sentence costs its tokens plus 44 bytes (its id, start and length), not a Python object. Rows follow
    the ids' order, so sorting rows sorts by id.
    """

    def __init__(self, sorted_ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, tokens: np.ndarray):
        self.sorted_ids = sorted_ids
        self.starts = starts
        self.lengths = lengths
        self.tokens = tokens

    @classmethod
    def load(cls, tokens_dir: Path, files: list[Path]) -> TokenStore:
        """Read the token files of the splits named by ``files`` (``<dataset>/<split>.parquet``, raw or token paths).

        A sentence found in several splits is kept once: its ids are the same everywhere. Each column is joined
        as soon as it is read, so memory never holds a column twice over.
        """
        if not files:
            raise DataError("no splits to read token ids for")
        ids, lengths, tokens = [], [], []
        for path in files:
            for batch in token_batches(token_file_of(tokens_dir, path), ["sentence_id", "input_ids"]):
                ids.append(fixed_ids(batch["sentence_id"]))
                lengths.append(pc.list_value_length(batch["input_ids"]).to_numpy().astype(np.int32))
                tokens.append(pc.list_flatten(batch["input_ids"]).to_numpy().astype(np.int32))
        tokens = np.concatenate(tokens)
        pa.default_memory_pool().release_unused()  # the parquet buffers, which the pool would otherwise keep
        lengths = np.concatenate(lengths)
        starts = np.cumsum(lengths, dtype=np.int64) - lengths
        sorted_ids, first = np.unique(np.concatenate(ids), return_index=True)
        return cls(sorted_ids, starts[first], lengths[first], tokens)

    def lookup(self, sentence_ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id (meaningless where absent) and whether it is present, by binary search."""
        rows, present = search_sorted(self.sorted_ids, np.asarray(sentence_ids, dtype=ID_DTYPE))
        return rows.astype(ROW_DTYPE), present

    def rows(self, sentence_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each id; a missing id is a data error (its split was not tokenized)."""
        rows, present = self.lookup(sentence_ids)
        if not present.all():
            first = np.asarray(sentence_ids, dtype=ID_DTYPE)[int(np.argmin(present))].decode()
            raise DataError(f"sentence {first} has no token ids ({int((~present).sum())} missing): re-run tokenize")
        return rows

    def ids(self, rows: np.ndarray) -> list[str | None]:
        """The sentence id of each row; None for ``NO_ROW``."""
        rows = np.asarray(rows)
        found = iter(id_strings(self.sorted_ids[rows[rows != NO_ROW]]))
        return [next(found) if row != NO_ROW else None for row in rows.tolist()]

    def padded(self, rows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of ``rows``, padded to their longest only."""
        lengths = self.lengths[rows]
        mask = np.arange(lengths.max(initial=0)) < lengths[:, None]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
        input_ids[mask] = self.tokens[np.repeat(self.starts[rows], lengths) + within]
        return torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64))

    def __len__(self) -> int:
        return len(self.sorted_ids)
