"""Training pairs as token batches: built from the pre-tokenized sentences, never tokenized on the fly.

An example (``training.examples``) is (anchor, positive, optional hard negative), all sentence ids. Batches
are cut from length-sorted buckets so they barely pad, and never hold one sentence
twice: with in-batch negatives, a repeated sentence would be a false negative.
Every epoch's batches are a pure function of (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from embedforge.data.sentences import search_sorted
from embedforge.errors import DataError
from embedforge.training.examples import Example
from embedforge.training.token_files import ID_DTYPE, fixed_ids, token_batches

# Anchors and positives are padded separately, so buckets sort by anchor length in bins of this
# many tokens, then by positive length: on SNLI pairs 18.5% of the tokens are padding, against
# 29% when sorting by the pair's total length and 56% without sorting.
ANCHOR_LENGTH_BIN = 4


class TokenStore:
    """Chunk-0 token ids of every sentence, as one flat int32 array indexed by sorted sentence ids.

    A million sentences cost their tokens plus 44 bytes each, not a Python list apiece.
    """

    def __init__(self, sorted_ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, tokens: np.ndarray):
        self.sorted_ids = sorted_ids
        self.starts = starts
        self.lengths = lengths
        self.tokens = tokens

    @classmethod
    def load(cls, tokens_dir: Path, files: list[Path]) -> TokenStore:
        """Read the token files of the splits named by ``files`` (``<dataset>/<split>.parquet``, raw or token paths).

        A sentence found in several splits is kept once: its ids are the same everywhere.
        """
        if not files:
            raise DataError("no splits to read token ids for")
        ids, starts, lengths, tokens = [], [], [], []
        offset = 0
        for path in files:
            token_file = tokens_dir / path.parent.name / path.name
            if not token_file.is_file():
                raise DataError(f"{token_file}: no token ids for this split; run `embedforge tokenize` first")
            for batch in token_batches(token_file, ["sentence_id", "input_ids"]):  # one row group at a time
                batch_lengths = pc.list_value_length(batch["input_ids"]).to_numpy().astype(np.int32)
                ids.append(fixed_ids(batch["sentence_id"]))
                lengths.append(batch_lengths)
                starts.append(offset + np.r_[0, np.cumsum(batch_lengths[:-1], dtype=np.int64)])
                tokens.append(pc.list_flatten(batch["input_ids"]).to_numpy().astype(np.int32))
                offset += int(batch_lengths.sum())
        sorted_ids, first = np.unique(np.concatenate(ids), return_index=True)
        store = cls(sorted_ids, np.concatenate(starts)[first], np.concatenate(lengths)[first], np.concatenate(tokens))
        pa.default_memory_pool().release_unused()  # the parquet buffers, which the pool would otherwise keep
        return store

    def lookup(self, sentence_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id (meaningless where absent) and whether it is present, by binary search."""
        return search_sorted(self.sorted_ids, np.asarray(sentence_ids, dtype=ID_DTYPE))

    def rows(self, sentence_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; a missing id is a data error (its split was not tokenized)."""
        rows, present = self.lookup(sentence_ids)
        if not present.all():
            first = sentence_ids[int(np.argmin(present))]
            raise DataError(f"sentence {first} has no token ids ({int((~present).sum())} missing): re-run tokenize")
        return rows

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


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, L] int64, L = the batch's longest sequence
    attention_mask: torch.Tensor  # [B, L] int64, 1 on tokens, 0 on padding
    sentence_ids: list[str]
    rows: np.ndarray  # the sentences' rows in the TokenStore, e.g. to look up their teacher vectors


@dataclass
class PairBatch:
    """Anchors and their positives row by row; ``negatives`` are extra candidates for every anchor, not aligned.

    Distillation batches hold lone sentences: anchors only.
    """

    anchors: TokenBatch
    positives: TokenBatch | None
    negatives: TokenBatch | None

    @property
    def parts(self) -> list[TokenBatch]:
        return [part for part in (self.anchors, self.positives, self.negatives) if part is not None]

    @property
    def sentence_ids(self) -> list[str]:
        return [identifier for part in self.parts for identifier in part.sentence_ids]

    @property
    def num_tokens(self) -> int:
        """Non-pad tokens: the work the model really does."""
        return sum(int(part.attention_mask.sum()) for part in self.parts)

    @property
    def num_examples(self) -> int:
        return len(self.anchors.sentence_ids)


class LengthBucketedBatches:
    """Each epoch: shuffle, sort buckets of ``bucket_batches`` batches by length, fill batches, shuffle batches.

    Sorting within a bucket keeps padding low while the bucket still mixes the data.
    A batch never holds a sentence twice (anchors, positives and negatives together):
    an example that would repeat one waits for the next batch. Every batch but the
    last is full, so an epoch always has ``ceil(examples / batch_size)`` batches; when
    one sentence is shared by about as many examples as there are batches, that may be
    impossible and the epoch raises a DataError rather than repeat or drop anything.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        store: TokenStore,
        batch_size: int,
        pad_id: int,
        seed: int,
        bucket_batches: int = 50,
    ):
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size} and {bucket_batches}")
        self.examples = list(examples)
        self.store = store
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.bucket_size = batch_size * bucket_batches
        if len({e.positive is None for e in self.examples}) > 1:
            raise ValueError("examples must be all pairs or all lone sentences, not a mix")
        self.anchor_rows = store.rows([e.anchor for e in self.examples])
        self.positive_rows = self.optional_rows([e.positive for e in self.examples])
        self.negative_rows = self.optional_rows([e.negative for e in self.examples])
        positive_lengths = np.where(self.positive_rows >= 0, store.lengths[self.positive_rows], 0)
        self.sort_keys = store.lengths[self.anchor_rows] // ANCHOR_LENGTH_BIN * 4096 + positive_lengths
        # Distinct lone sentences never collide, so they need no per-example sets (about 90 bytes a sentence).
        lone_and_distinct = (self.positive_rows < 0).all() and len(np.unique(self.anchor_rows)) == len(self.examples)
        self.sentences = (
            None
            if lone_and_distinct
            else [
                tuple(row for row in rows if row >= 0)
                for rows in zip(
                    self.anchor_rows.tolist(), self.positive_rows.tolist(), self.negative_rows.tolist(), strict=True
                )
            ]
        )
        self.num_batches = math.ceil(len(self.examples) / batch_size)

    def optional_rows(self, sentence_ids: list[str | None]) -> np.ndarray:
        """Store rows of the ids that are given, -1 where an example has none."""
        rows = np.full(len(sentence_ids), -1, dtype=np.int64)
        given = [i for i, identifier in enumerate(sentence_ids) if identifier is not None]
        rows[given] = self.store.rows([sentence_ids[i] for i in given])
        return rows

    def __len__(self) -> int:
        return self.num_batches

    def plan(self, epoch: int) -> list[list[int]]:
        """The example indices of every batch of ``epoch``, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples))
        bucket = np.arange(len(order)) // self.bucket_size
        stream = order[np.lexsort((self.sort_keys[order], bucket))]
        batches = self.fill(stream.tolist())
        return [batches[i] for i in rng.permutation(len(batches))]

    def fill(self, stream: list[int]) -> list[list[int]]:
        """Cut ``stream`` into full batches without a repeated sentence, carrying colliding examples forward."""
        if self.sentences is None:
            return [stream[start : start + self.batch_size] for start in range(0, len(stream), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        taken: set[int] = set()
        waiting: deque[int] = deque()

        def add(index: int) -> None:
            current.append(index)
            taken.update(self.sentences[index])

        def close() -> None:
            batches.append(current.copy())
            current.clear()
            taken.clear()

        def take_waiting() -> None:
            while waiting:
                for _ in range(len(waiting)):
                    index = waiting.popleft()
                    if len(current) < self.batch_size and taken.isdisjoint(self.sentences[index]):
                        add(index)
                    else:
                        waiting.append(index)
                if len(current) < self.batch_size:
                    return
                close()

        for index in stream:
            if taken.isdisjoint(self.sentences[index]):
                add(index)
            else:
                waiting.append(index)
            if len(current) == self.batch_size:
                close()
                take_waiting()
        for index in waiting:  # each collides with the open last batch: trade places with an earlier batch
            if len(current) == self.batch_size:
                close()
            if taken.isdisjoint(self.sentences[index]):
                add(index)
            else:
                add(self.swap_into(batches, index, taken))
        if current:
            batches.append(current)
        return batches

    def swap_into(self, batches: list[list[int]], index: int, taken: set[int]) -> int:
        """Put ``index`` into an earlier batch in place of an example that fits the open batch; return that one."""
        mine = set(self.sentences[index])
        for batch in reversed(batches):
            clashes = [other for other in batch if not mine.isdisjoint(self.sentences[other])]
            if len(clashes) > 1:
                continue
            for other in clashes or batch:
                if taken.isdisjoint(self.sentences[other]):
                    batch[batch.index(other)] = index
                    return other
        raise DataError(
            f"cannot place {self.examples[index]} in a batch of {self.batch_size} without repeating a sentence: "
            "too many examples share one sentence; lower the batch size"
        )

    def epoch(self, epoch: int) -> Iterator[PairBatch]:
        """The batches of ``epoch``, each built when reached; the trainer resumes mid-epoch by slicing ``plan``."""
        for indices in self.plan(epoch):
            yield self.build(indices)

    def build(self, indices: list[int]) -> PairBatch:
        chosen = np.asarray(indices)
        negatives = chosen[self.negative_rows[chosen] >= 0]
        pairs = bool(len(chosen)) and self.positive_rows[chosen[0]] >= 0
        return PairBatch(
            anchors=self.token_batch(self.anchor_rows[chosen], [self.examples[i].anchor for i in indices]),
            positives=(
                self.token_batch(self.positive_rows[chosen], [self.examples[i].positive for i in indices])
                if pairs
                else None
            ),
            negatives=(
                self.token_batch(self.negative_rows[negatives], [self.examples[i].negative for i in negatives])
                if len(negatives)
                else None
            ),
        )

    def token_batch(self, rows: np.ndarray, sentence_ids: list[str]) -> TokenBatch:
        input_ids, attention_mask = self.store.padded(rows, self.pad_id)
        return TokenBatch(input_ids, attention_mask, sentence_ids, rows)

    def padding_ratio(self, epoch: int = 0) -> float:
        """Share of pad tokens over all of ``epoch``'s tensors, computed without building them."""
        padded = real = 0
        for indices in self.plan(epoch):
            chosen = np.asarray(indices)
            positives, negatives = self.positive_rows[chosen], self.negative_rows[chosen]
            for rows in (self.anchor_rows[chosen], positives[positives >= 0], negatives[negatives >= 0]):
                lengths = self.store.lengths[rows]
                padded += len(lengths) * int(lengths.max(initial=0))
                real += int(lengths.sum())
        return 1.0 - real / padded if padded else 0.0
