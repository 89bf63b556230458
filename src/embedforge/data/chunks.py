"""Texts as units: a text that fits ``tokenize.max_length`` tokens is one unit, a longer one several chunks.

Chunks are cut once, by the teacher's tokenizer, into spans of the text's own characters that start at a
word (after whitespace) wherever one fits, so a chunk re-tokenizes to the tokens it was cut from. Precompute
embeds each unit, tokenize gives each unit the student's token ids, and both key a unit by ``unit_id``, the
id of the text it covers: the unit of a text that fits is the text itself (its id is the text's id, so a
sentence corpus's cache and token ids are what they were before chunks), a chunk has the id of its own
characters, so the cache is content-addressed and a change of ``max_length`` or ``chunk_overlap`` gives new
chunks new ids rather than stale vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.data.text_ids import id_prefix, sentence_id

BATCH_TEXTS = 1024  # texts read at a time; only the long ones among them are tokenized, in one call


@dataclass(frozen=True)
class Chunked:
    """One text and its units (``[text]`` when it fits)."""

    text: str
    units: list[str]

    @property
    def text_id(self) -> str:
        return sentence_id(self.text)

    def unit_ids(self) -> list[str]:
        return [self.text_id] if len(self.units) == 1 else [sentence_id(unit) for unit in self.units]


class Chunker:
    """Cuts texts longer than ``max_length`` tokens (special tokens included) into chunks that share
    ``overlap`` tokens, rounded to whole words where the words allow.

    A text whose UTF-8 bytes fit is one unit without being tokenized: no tokenizer a teacher uses makes more
    tokens than a text has bytes (WordPiece and SentencePiece pieces cover at least a character, byte-level
    BPE at least a byte), so a corpus of sentences costs one ``len`` a text.
    """

    def __init__(self, tokenizer: Any, max_length: int, overlap: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        self.overlap = overlap
        if self.budget < 1 or overlap >= self.budget:
            raise ValueError(
                f"tokenize.max_length {max_length} leaves {self.budget} tokens a chunk after special tokens, "
                f"which must exceed tokenize.chunk_overlap {overlap}"
            )

    def fits(self, text: str) -> bool:
        return len(text.encode("utf-8")) <= self.budget

    def split(self, texts: list[str]) -> list[Chunked]:
        """Each text with its units, in order; the texts that may not fit are tokenized in one call."""
        long = [index for index, text in enumerate(texts) if not self.fits(text)]
        out = [Chunked(text, [text]) for text in texts]
        if not long:
            return out
        encoded = self.tokenizer(
            [texts[index] for index in long],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # longer than the model reads: that is why it is being cut
        )
        for index, offsets in zip(long, encoded["offset_mapping"], strict=True):
            text = texts[index]
            out[index] = Chunked(text, [text] if len(offsets) <= self.budget else self.cut(text, offsets))
        return out

    def cut(self, text: str, offsets: list[tuple[int, int]]) -> list[str]:
        """Windows of at most ``budget`` tokens over ``offsets``: each ends before a word, unless its one word is
        longer than a window, and starts at most ``overlap`` tokens back, at a word. The last window ends at the
        text's end and reaches back as far as a window holds, sharing more with its neighbour: a full chunk, never
        a scrap of the text's last few words."""
        word_start = [start == 0 or text[start - 1].isspace() for start, _ in offsets]
        units, first, count = [], 0, len(offsets)
        while True:
            end = min(first + self.budget, count)
            if end < count:
                end = next((k for k in range(end, first, -1) if word_start[k]), end)
            elif first:
                first = next(k for k in range(count - self.budget, first + 1) if word_start[k] or k == first)
            units.append(text[offsets[first][0] : offsets[end - 1][1]])
            if end == count:
                return units
            wanted = max(end - self.overlap, first + 1)
            first = next((k for k in range(wanted, end) if word_start[k]), end)


def iter_units(files: list[Path], chunker: Chunker) -> Iterator[tuple[str, str]]:
    """``(unit_id, unit text)`` of every unit of every text of ``files`` (as ``iter_sentences`` reads them), in file
    order: what the teacher embeds. Texts are cut ``BATCH_TEXTS`` (or ``BATCH_CHARS`` of text) at a time."""
    from embedforge.data.sentences import iter_sentences, text_batches  # pyarrow: a serving process cuts without it

    for batch in text_batches(iter_sentences(files), BATCH_TEXTS):
        yield from units_of(chunker.split(batch))


def units_of(texts: list[Chunked]) -> Iterator[tuple[str, str]]:
    for chunked in texts:
        yield from zip(chunked.unit_ids(), chunked.units, strict=True)


def unit_prefixes(files: list[Path], chunker: Chunker) -> np.ndarray:
    """``id_prefix`` of every unit of ``files``, 8 bytes a unit: what precompute plans its shards by."""
    return np.fromiter((id_prefix(unit_id) for unit_id, _ in iter_units(files, chunker)), dtype=np.uint64)
