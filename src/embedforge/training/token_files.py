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


def token_batches(token_file: Path, columns: list[str], max_chunks: int | None = None) -> Iterator[pa.RecordBatch]:
    """The units of a token file (with ``sentence_id``, ``unit_id`` and ``chunk``), a row group at a time: memory
    holds one group. ``max_chunks`` keeps a text's first chunks only (None: every chunk)."""
    wanted = list(dict.fromkeys([*columns, "sentence_id", "unit_id", "chunk"]))
    for batch in stream_parquet(token_file).iter_batches(columns=wanted):
        yield batch if max_chunks is None else batch.filter(pc.less(batch["chunk"], max_chunks))


def unit_ids(batch: pa.RecordBatch) -> np.ndarray:
    """Each row's unit id (``ID_DTYPE``): its ``unit_id``, or its text's id where the unit is the whole text."""
    return fixed_ids(pc.coalesce(batch["unit_id"], batch["sentence_id"]))


def token_file_of(tokens_dir: Path, path: Path) -> Path:
    """The token file of the split ``path`` names (``<dataset>/<split>.parquet``, raw or token path); it must exist."""
    token_file = tokens_dir / path.parent.name / path.name
    if not token_file.is_file():
        raise DataError(f"{token_file}: no token ids for this split; run `embedforge tokenize` first")
    return token_file


class TokenStore:
    """The token ids of every unit (a text, or a chunk of a long one), as one flat int32 array indexed by sorted
    unit ids.

    A unit costs its tokens plus 44 bytes (its id, start and length), not a Python object. Rows follow the ids'
    order, so sorting rows sorts by id. A text cut into chunks is also found by its own id, at its first chunk
    (``aliases``): pairs name texts, and pair their first chunks.
    """

    def __init__(
        self,
        sorted_ids: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        tokens: np.ndarray,
        aliases: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.sorted_ids = sorted_ids
        self.starts = starts
        self.lengths = lengths
        self.tokens = tokens
        self.alias_ids, self.alias_rows = aliases or (np.zeros(0, ID_DTYPE), np.zeros(0, ROW_DTYPE))

    @classmethod
    def load(cls, tokens_dir: Path, files: list[Path]) -> TokenStore:
        """Read the token files of the splits named by ``files`` (``<dataset>/<split>.parquet``, raw or token paths).

        A sentence found in several splits is kept once: its ids are the same everywhere. Each column is joined
        as soon as it is read, so memory never holds a column twice over.
        """
        if not files:
            raise DataError("no splits to read token ids for")
        ids, lengths, tokens, chunked_texts, first_chunks = [], [], [], [], []
        for path in files:
            for batch in token_batches(token_file_of(tokens_dir, path), ["input_ids"]):
                ids.append(unit_ids(batch))
                lengths.append(pc.list_value_length(batch["input_ids"]).to_numpy().astype(np.int32))
                tokens.append(pc.list_flatten(batch["input_ids"]).to_numpy().astype(np.int32))
                first_chunk = batch.filter(pc.and_(pc.is_valid(batch["unit_id"]), pc.equal(batch["chunk"], 0)))
                chunked_texts.append(fixed_ids(first_chunk["sentence_id"]))
                first_chunks.append(fixed_ids(first_chunk["unit_id"]))
        tokens = np.concatenate(tokens)
        pa.default_memory_pool().release_unused()  # the parquet buffers, which the pool would otherwise keep
        lengths = np.concatenate(lengths)
        starts = np.cumsum(lengths, dtype=np.int64) - lengths
        sorted_ids, first = np.unique(np.concatenate(ids), return_index=True)
        texts, at = np.unique(np.concatenate(chunked_texts), return_index=True)
        alias_rows = search_sorted(sorted_ids, np.concatenate(first_chunks)[at])[0].astype(ROW_DTYPE)
        return cls(sorted_ids, starts[first], lengths[first], tokens, (texts, alias_rows))

    def lookup(self, ids: Sequence[str] | np.ndarray, texts: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Row of each unit id (meaningless where absent) and whether it is present, by binary search; with
        ``texts``, the id of a text cut into chunks finds its first chunk."""
        wanted = np.asarray(ids, dtype=ID_DTYPE)
        rows, present = search_sorted(self.sorted_ids, wanted)
        rows = rows.astype(ROW_DTYPE)
        if texts and len(self.alias_ids) and not present.all():
            missing = np.flatnonzero(~present)
            at, aliased = search_sorted(self.alias_ids, wanted[missing])
            rows[missing[aliased]] = self.alias_rows[at[aliased]]
            present[missing[aliased]] = True
        return rows, present

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each text or unit id; a missing id is a data error (its split was not tokenized)."""
        rows, present = self.lookup(ids)
        if not present.all():
            first = np.asarray(ids, dtype=ID_DTYPE)[int(np.argmin(present))].decode()
            raise DataError(f"sentence {first} has no token ids ({int((~present).sum())} missing): re-run tokenize")
        return rows

    def ids(self, rows: np.ndarray) -> list[str | None]:
        """The unit id of each row; None for ``NO_ROW``."""
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
