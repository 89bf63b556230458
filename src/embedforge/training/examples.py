"""Training examples as arrays of TokenStore rows: entailment pairs with hard negatives, pairs scored as similar,
or lone sentences for distillation. Read from the raw pair splits (which sentences pair up) and the token files
(which sentences exist); the order is always sorted by id, never the files' row order.

An example costs three int32s, not a Python object: fifty million of them fit in 600 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from embedforge.data.held_out import held_out
from embedforge.data.sentences import fixed_ids, normalize_text, sentence_id
from embedforge.errors import DataError
from embedforge.training.token_files import (
    NO_ROW,
    ROW_DTYPE,
    TokenStore,
    token_batches,
    token_file_of,
    unit_ids,
)


@dataclass(frozen=True, eq=False)
class Examples:
    """Aligned TokenStore rows: each example's anchor, its positive and a hard negative of the anchor (``NO_ROW``
    where it has none). Lone sentences (no positives) are examples for distillation, which needs no pairs."""

    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    @classmethod
    def lone(cls, rows: np.ndarray) -> Examples:
        rows = np.asarray(rows, dtype=ROW_DTYPE)
        return cls(rows, np.full(len(rows), NO_ROW, ROW_DTYPE), np.full(len(rows), NO_ROW, ROW_DTYPE))

    @classmethod
    def of_ids(cls, store: TokenStore, frame: pd.DataFrame) -> Examples:
        """The examples of a frame of ``anchor``, ``positive`` and ``negative`` sentence ids (None: no negative),
        each of which the store must hold."""
        negatives = np.full(len(frame), NO_ROW, ROW_DTYPE)
        given = frame["negative"].notna().to_numpy()
        negatives[given] = store.rows(frame["negative"].to_numpy()[given].astype(str))
        anchors, positives = (store.rows(frame[column].to_numpy(dtype=str)) for column in ("anchor", "positive"))
        return cls(anchors, positives, negatives)

    @classmethod
    def joined(cls, parts: Sequence[Examples]) -> Examples:
        if not parts:
            return cls.lone(np.zeros(0, ROW_DTYPE))
        columns = ("anchors", "positives", "negatives")
        return cls(*(np.concatenate([getattr(part, column) for part in parts]) for column in columns))

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def paired(self) -> bool:
        """Whether these are pairs; examples are all pairs or all lone sentences, never a mix."""
        return bool(len(self)) and self.positives[0] != NO_ROW

    def take(self, indices: np.ndarray | slice) -> Examples:
        return Examples(self.anchors[indices], self.positives[indices], self.negatives[indices])

    def without_negatives(self) -> Examples:
        return Examples(self.anchors, self.positives, np.full(len(self), NO_ROW, ROW_DTYPE)).in_order()

    def in_order(self) -> Examples:
        """Distinct examples sorted by anchor, positive, then negative (none first): rows sort as their ids do."""
        order = np.lexsort((self.negatives, self.positives, self.anchors))
        ordered = self.take(order)
        repeated = np.zeros(len(order), bool)
        repeated[1:] = (
            (ordered.anchors[1:] == ordered.anchors[:-1])
            & (ordered.positives[1:] == ordered.positives[:-1])
            & (ordered.negatives[1:] == ordered.negatives[:-1])
        )
        return ordered.take(~repeated) if repeated.any() else ordered

    def describe(self, store: TokenStore, index: int) -> str:
        """One example by sentence ids, for messages."""
        anchor, positive, negative = store.ids([self.anchors[index], self.positives[index], self.negatives[index]])
        return f"(anchor {anchor}, positive {positive}, negative {negative})"


@dataclass
class HeldOut:
    """The texts training leaves out (``train.held_out_share`` of them, by ``seed``) for evaluate's teacher agreement,
    and how many examples that has dropped: each example builder adds the ones it drops."""

    share: float
    seed: int
    dropped: int = 0

    def pairs_kept(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """The pairs none of whose texts (anchor, positive, hard negative) is held out."""
        touched = np.zeros(len(pairs), bool)
        for column in ("anchor", "positive", "negative"):
            given = pairs[column].notna().to_numpy()
            touched[given] |= held_out(pairs[column].to_numpy()[given], self.share, self.seed)
        self.dropped += int(touched.sum())
        return pairs[~touched]

    def units_kept(self, batch: pa.RecordBatch) -> np.ndarray:
        """The unit ids of a token batch whose text is not held out: a long text's chunks go with it."""
        touched = held_out(fixed_ids(batch["sentence_id"]), self.share, self.seed)
        self.dropped += int(touched.sum())
        return unit_ids(batch)[~touched]


def text_ids(texts: pd.Series) -> pd.Series:
    """The sentence id of every text, hashing each distinct text once (SNLI premises repeat)."""
    return texts.map({text: sentence_id(normalize_text(text)) for text in texts.unique()})


def nli_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Entailment pairs by id, each with a contradiction of the same premise as its hard negative.

    A premise's entailments take its contradictions in turn (both sorted by id), so
    several contradictions all get used and the choice is deterministic.
    """
    pairs = frame[["label"]].assign(anchor=text_ids(frame["sentence1"]), positive=text_ids(frame["sentence2"]))
    pairs = pairs[pairs["anchor"] != pairs["positive"]].drop_duplicates()
    contradictions = (
        pairs[pairs["label"] == "contradiction"].sort_values("positive").groupby("anchor")["positive"].agg(list)
    )
    entailments = pairs[pairs["label"] == "entailment"].sort_values(["anchor", "positive"])
    chosen = []
    for turn, anchor, positive in zip(
        entailments.groupby("anchor").cumcount(), entailments["anchor"], entailments["positive"], strict=True
    ):
        negatives = [n for n in contradictions.get(anchor, []) if n != positive]
        chosen.append(negatives[turn % len(negatives)] if negatives else None)
    return pd.DataFrame({"anchor": entailments["anchor"], "positive": entailments["positive"], "negative": chosen})


def scored_pairs(frame: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """Pairs by id scored at least ``min_score``, as positives without a hard negative."""
    similar = frame[frame["score"] >= min_score]
    pairs = pd.DataFrame({"anchor": text_ids(similar["sentence1"]), "positive": text_ids(similar["sentence2"])})
    return pairs[pairs["anchor"] != pairs["positive"]].assign(negative=None)


def pair_examples(
    path: Path, labelled: bool, min_score: float, store: TokenStore, held: HeldOut | None = None
) -> Examples:
    """The training examples of one raw pairs split: entailment pairs when it is labelled, else pairs scoring at
    least ``min_score``, less those naming a ``held`` out text. Duplicates are kept once; the order is sorted, so it
    does not depend on the file's row order.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; run `embedforge download` first")
    frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "label", "score"])
    pairs = nli_pairs(frame) if labelled else scored_pairs(frame, min_score)
    return Examples.of_ids(store, held.pairs_kept(pairs) if held else pairs).in_order()


def sentence_examples(
    tokens_dir: Path, files: list[Path], store: TokenStore, max_chunks: int | None = None, held: HeldOut | None = None
) -> Examples:
    """Every distinct unit of the splits named by ``files``, alone, but those of ``held`` out texts: what
    distillation trains on. A long text gives each of its chunks, or its first ``max_chunks``
    (``train.max_chunks_per_text``)."""
    rows = [
        store.rows(held.units_kept(batch) if held else unit_ids(batch))
        for path in files
        for batch in token_batches(token_file_of(tokens_dir, path), [], max_chunks)
    ]
    return Examples.lone(np.unique(np.concatenate(rows)) if rows else np.zeros(0, ROW_DTYPE))
