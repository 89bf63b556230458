"""Training pairs as token batches: built from the pre-tokenized sentences, never tokenized on the fly.

An example (``training.examples``) is (anchor, positive, optional hard negative), all TokenStore rows. Batches
are cut from length-sorted buckets so they barely pad, and never hold one sentence
twice: with in-batch negatives, a repeated sentence would be a false negative.
Every epoch's batches are a pure function of (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from embedforge.data.sentences import id_strings
from embedforge.errors import DataError
from embedforge.training.examples import Examples
from embedforge.training.token_files import NO_ROW, TokenStore

# Anchors and positives are padded separately, so buckets sort by anchor length in bins of this
# many tokens, then by positive length: on SNLI pairs 18.5% of the tokens are padding, against
# 29% when sorting by the pair's total length and 56% without sorting.
ANCHOR_LENGTH_BIN = 4
FILL_CHUNK = 65_536  # examples whose rows are Python tuples at once while batches are filled


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

    An epoch's plan is index arrays into ``examples``: 8 bytes an example, never a Python object apiece.
    """

    def __init__(
        self,
        examples: Examples,
        store: TokenStore,
        batch_size: int,
        pad_id: int,
        seed: int,
        bucket_batches: int = 50,
    ):
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size} and {bucket_batches}")
        lone = examples.positives == NO_ROW
        if lone.any() and not lone.all():
            raise ValueError("examples must be all pairs or all lone sentences, not a mix")
        self.examples = examples
        self.store = store
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.bucket_size = batch_size * bucket_batches
        self.anchor_rows = examples.anchors
        self.positive_rows = examples.positives
        self.negative_rows = examples.negatives
        positive_lengths = np.where(lone, 0, store.lengths[self.positive_rows])
        self.sort_keys = store.lengths[self.anchor_rows] // ANCHOR_LENGTH_BIN * 4096 + positive_lengths
        # Distinct lone sentences never collide: their batches are cut without checking.
        self.never_collide = bool(lone.all()) and len(np.unique(self.anchor_rows)) == len(examples)
        self.num_batches = math.ceil(len(examples) / batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The example indices of every batch of ``epoch``, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        stream = rng.permutation(len(self.examples))
        for start in range(0, len(stream), self.bucket_size):  # a stable sort of each bucket, in place
            bucket = stream[start : start + self.bucket_size]
            bucket[:] = bucket[np.argsort(self.sort_keys[bucket], kind="stable")]
        batches = self.fill(stream)
        return [batches[i] for i in rng.permutation(len(batches))]

    def sentences(self, indices: np.ndarray) -> list[tuple[int, ...]]:
        """The rows each example holds, as tuples for the collision checks."""
        rows = np.stack([self.anchor_rows[indices], self.positive_rows[indices], self.negative_rows[indices]], axis=1)
        return [tuple(row for row in example if row != NO_ROW) for example in rows.tolist()]

    def fill(self, stream: np.ndarray) -> list[np.ndarray]:
        """Cut ``stream`` into full batches without a repeated sentence, carrying colliding examples forward.

        The stream is read ``FILL_CHUNK`` examples at a time, so only that many (and those waiting) are held as
        Python tuples.
        """
        if self.never_collide:
            return [stream[start : start + self.batch_size] for start in range(0, len(stream), self.batch_size)]
        batches: list[np.ndarray] = []
        current: list[int] = []
        taken: set[int] = set()
        waiting: deque[tuple[int, tuple[int, ...]]] = deque()

        def add(index: int, sentences: tuple[int, ...]) -> None:
            current.append(index)
            taken.update(sentences)

        def close() -> None:
            batches.append(np.asarray(current, dtype=np.int64))
            current.clear()
            taken.clear()

        def take_waiting() -> None:
            while waiting:
                for _ in range(len(waiting)):
                    index, sentences = waiting.popleft()
                    if len(current) < self.batch_size and taken.isdisjoint(sentences):
                        add(index, sentences)
                    else:
                        waiting.append((index, sentences))
                if len(current) < self.batch_size:
                    return
                close()

        for start in range(0, len(stream), FILL_CHUNK):
            chunk = stream[start : start + FILL_CHUNK]
            for index, sentences in zip(chunk.tolist(), self.sentences(chunk), strict=True):
                if taken.isdisjoint(sentences):
                    add(index, sentences)
                else:
                    waiting.append((index, sentences))
                if len(current) == self.batch_size:
                    close()
                    take_waiting()
        for index, sentences in waiting:  # each collides with the open last batch: trade places with an earlier batch
            if len(current) == self.batch_size:
                close()
            if taken.isdisjoint(sentences):
                add(index, sentences)
            else:
                add(*self.swap_into(batches, index, sentences, taken))
        if current:
            close()
        return batches

    def swap_into(
        self, batches: list[np.ndarray], index: int, sentences: tuple[int, ...], taken: set[int]
    ) -> tuple[int, tuple[int, ...]]:
        """Put ``index`` into an earlier batch in place of an example that fits the open batch; return that one."""
        mine = set(sentences)
        for batch in reversed(batches):
            members = self.sentences(batch)
            clashes = [position for position, other in enumerate(members) if not mine.isdisjoint(other)]
            if len(clashes) > 1:
                continue
            for position in clashes or range(len(batch)):
                if taken.isdisjoint(members[position]):
                    other = int(batch[position])
                    batch[position] = index
                    return other, members[position]
        raise DataError(
            f"cannot place {self.examples.describe(self.store, index)} in a batch of {self.batch_size} without "
            "repeating a sentence: too many examples share one sentence; lower the batch size"
        )

    def epoch(self, epoch: int) -> Iterator[PairBatch]:
        """The batches of ``epoch``, each built when reached; the trainer resumes mid-epoch by slicing ``plan``."""
        for indices in self.plan(epoch):
            yield self.build(indices)

    def build(self, indices: np.ndarray) -> PairBatch:
        chosen = np.asarray(indices, dtype=np.int64)
        negatives = self.negative_rows[chosen]
        negatives = negatives[negatives != NO_ROW]
        return PairBatch(
            anchors=self.token_batch(self.anchor_rows[chosen]),
            positives=self.token_batch(self.positive_rows[chosen]) if self.examples.paired and len(chosen) else None,
            negatives=self.token_batch(negatives) if len(negatives) else None,
        )

    def token_batch(self, rows: np.ndarray) -> TokenBatch:
        input_ids, attention_mask = self.store.padded(rows, self.pad_id)
        return TokenBatch(input_ids, attention_mask, id_strings(self.store.sorted_ids[rows]), rows.astype(np.int64))

    def padding_ratio(self, epoch: int = 0) -> float:
        """Share of pad tokens over all of ``epoch``'s tensors, computed without building them."""
        padded = real = 0
        for chosen in self.plan(epoch):
            positives, negatives = self.positive_rows[chosen], self.negative_rows[chosen]
            for rows in (self.anchor_rows[chosen], positives[positives != NO_ROW], negatives[negatives != NO_ROW]):
                lengths = self.store.lengths[rows]
                padded += len(lengths) * int(lengths.max(initial=0))
                real += int(lengths.sum())
        return 1.0 - real / padded if padded else 0.0
