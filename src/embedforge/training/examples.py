"""Training examples by sentence id: entailment pairs with hard negatives, pairs scored as similar, or lone
sentences for distillation. Read from the raw pair splits (which sentences pair up) and the token files (which
sentences exist); the order is always sorted by id, never the files' row order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.errors import DataError
from embedforge.training.token_files import ID_DTYPE, fixed_ids, id_strings, token_batches


@dataclass(frozen=True, slots=True)
class Example:
    """One training pair by sentence id; ``negative`` is a hard negative of the anchor, when the data has one.

    A lone sentence (``positive`` None) is an example for distillation, which needs no pairs.
    """

    anchor: str
    positive: str | None
    negative: str | None

    def sort_key(self) -> tuple[str, str, str]:
        """The order examples are kept in: by ids, so it never depends on the files' row order."""
        return self.anchor, self.positive or "", self.negative or ""


def in_order(examples: Iterable[Example]) -> list[Example]:
    """Distinct examples, sorted by ``Example.sort_key``."""
    return sorted(set(examples), key=Example.sort_key)


def text_ids(texts: pd.Series) -> pd.Series:
    """The sentence id of every text, hashing each distinct text once (SNLI premises repeat)."""
    return texts.map({text: sentence_id(normalize_text(text)) for text in texts.unique()})


def nli_examples(frame: pd.DataFrame) -> list[Example]:
    """Entailment pairs, each with a contradiction of the same premise as its hard negative.

    A premise's entailments take its contradictions in turn (both sorted by id), so
    several contradictions all get used and the choice is deterministic.
    """
    pairs = frame[["label"]].assign(anchor=text_ids(frame["sentence1"]), positive=text_ids(frame["sentence2"]))
    pairs = pairs[pairs["anchor"] != pairs["positive"]].drop_duplicates()
    contradictions = (
        pairs[pairs["label"] == "contradiction"].sort_values("positive").groupby("anchor")["positive"].agg(list)
    )
    entailments = pairs[pairs["label"] == "entailment"].sort_values(["anchor", "positive"])
    examples = []
    for turn, anchor, positive in zip(
        entailments.groupby("anchor").cumcount(), entailments["anchor"], entailments["positive"], strict=True
    ):
        negatives = [n for n in contradictions.get(anchor, []) if n != positive]
        examples.append(Example(anchor, positive, negatives[turn % len(negatives)] if negatives else None))
    return examples


def score_examples(frame: pd.DataFrame, min_score: float) -> list[Example]:
    """Pairs scored at least ``min_score``, as positives without a hard negative."""
    similar = frame[frame["score"] >= min_score]
    return [
        Example(anchor, positive, None)
        for anchor, positive in zip(text_ids(similar["sentence1"]), text_ids(similar["sentence2"]), strict=True)
        if anchor != positive
    ]


def pair_examples(path: Path, labelled: bool, min_score: float) -> list[Example]:
    """The training examples of one raw pairs split: entailment pairs when it is labelled, else pairs scoring at
    least ``min_score``. Duplicates are kept once; the order is sorted, so it does not depend on the file's row order.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; run `embedforge download` first")
    frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "label", "score"])
    return in_order(nli_examples(frame) if labelled else score_examples(frame, min_score))


def sentence_examples(tokens_dir: Path, files: list[Path]) -> list[Example]:
    """Every distinct sentence of the splits named by ``files``, alone: what distillation trains on."""
    ids = []
    for path in files:
        token_file = tokens_dir / path.parent.name / path.name
        if not token_file.is_file():
            raise DataError(f"{token_file}: no token ids for this split; run `embedforge tokenize` first")
        ids += [fixed_ids(batch["sentence_id"]) for batch in token_batches(token_file, ["sentence_id"])]
    distinct = np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=ID_DTYPE)
    return [Example(identifier, None, None) for identifier in id_strings(distinct)]
