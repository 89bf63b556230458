"""tokenize: turn every distinct sentence into token ids once, so training never tokenizes on the fly.

Writes ``data/tokens/<dataset>/<split>.parquet`` (one row per unit:
``sentence_id, chunk, unit_id, input_ids, length``, texts in the order they first
occur) and the tokenizer the student must use, ``data/tokens/tokenizer/``: the
teacher's, another pretrained one, or a WordPiece/BPE vocabulary trained here on
the training text. A text longer than ``tokenize.max_length`` tokens becomes
several chunks (``data.chunks``: cut by the teacher's tokenizer, sharing about
``tokenize.chunk_overlap`` tokens), the same units precompute embeds, instead of
being cut. ``stats.json`` keeps each split's lengths before chunking, chunks per
text and the share of tokens truncation to one chunk would drop: the report's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.config import TRAIN_SPLIT, Params
from embedforge.data.chunks import Chunker
from embedforge.data.gate import require_passed
from embedforge.data.sentences import id_prefixes, iter_sentences, split_files, text_batches
from embedforge.errors import UserError
from embedforge.files import atomic_dir, write_json
from embedforge.models import teacher as teachers
from embedforge.paths import TOKEN_STATS_PATH, TOKENIZER_DIR, TOKENS_DIR

log = logging.getLogger(__name__)

BATCH_SENTENCES = 8192
TOKEN_SCHEMA = pa.schema(
    [
        pa.field("sentence_id", pa.string(), nullable=False),
        pa.field("chunk", pa.int16(), nullable=False),
        pa.field("unit_id", pa.string()),  # null: the unit is the whole text, whose id is sentence_id
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
    ]
)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LENGTH_EDGES = np.array([16, 32, 64, 128, 256, 512, 1024, 2048, 4096])  # the report's bins of text lengths
MAX_CHUNKS_COUNTED = 32  # texts of more chunks are counted with those of this many


def train_vocabulary(kind: str, vocab_size: int, texts: Any) -> Any:
    """A new WordPiece (BERT-style, lower-cased) or byte-level BPE tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        core.normalizer = normalizers.BertNormalizer(lowercase=True)
        core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        core.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    else:
        core = Tokenizer(models.BPE(unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    core.train_from_iterator(texts, trainer=trainer)
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_tokenizer(cfg: Params) -> Any:
    """The tokenizer named by tokenize.tokenizer, or a vocabulary trained on the training sentences."""
    from transformers import AutoTokenizer

    params = cfg.tokenize
    if params.train_vocab:
        texts = iter_sentences(split_files(params.datasets, [TRAIN_SPLIT]))
        return train_vocabulary(params.train_vocab, params.vocab_size, texts)
    source = teachers.resolve(cfg.precompute.teacher).path if params.tokenizer == "teacher" else params.tokenizer
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenize.tokenizer: cannot load a tokenizer from {source!r} ({exc})") from None


def chunk_batch(tokenizer: Any, texts: list[str], max_length: int, overlap: int) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``texts`` in windows of at most ``max_length`` (special tokens included); source index per chunk."""
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=overlap,
        return_overflowing_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return list(encoded["overflow_to_sample_mapping"]), encoded["input_ids"]


def chunk_numbers(owners: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal owners: [4, 4, 4, 7, 9, 9] -> [0, 1, 2, 0, 0, 1]."""
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    runs = np.diff(np.r_[starts, owners.size])
    return (np.arange(owners.size) - np.repeat(starts, runs)).astype(np.int16)


class SplitStats:
    """What a split's texts look like before and after chunking, kept in a few numbers and two histograms, so
    memory holds no array per text or chunk."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.sentences = self.chunked = self.truncated = self.units = self.unit_tokens = 0
        self.min_length: int | None = None
        self.max_seen = 0
        self.text_tokens = self.kept_by_truncation = 0
        self.length_counts = np.zeros(len(LENGTH_EDGES) + 1, dtype=np.int64)
        self.chunk_counts = np.zeros(MAX_CHUNKS_COUNTED + 1, dtype=np.int64)

    def add(self, unit_lengths: np.ndarray, text_lengths: np.ndarray, units_per_text: np.ndarray, truncated: int):
        self.sentences += len(text_lengths)
        self.chunked += int(np.count_nonzero(units_per_text > 1))
        self.truncated += truncated
        self.units += len(unit_lengths)
        self.unit_tokens += int(unit_lengths.sum())
        if len(unit_lengths):
            shortest = int(unit_lengths.min())
            self.min_length = shortest if self.min_length is None else min(self.min_length, shortest)
            self.max_seen = max(self.max_seen, int(unit_lengths.max()))
        self.text_tokens += int(text_lengths.sum())
        self.kept_by_truncation += int(np.minimum(text_lengths, self.max_length).sum())
        self.length_counts += np.bincount(
            np.searchsorted(LENGTH_EDGES, text_lengths), minlength=len(self.length_counts)
        )
        self.chunk_counts += np.bincount(
            np.minimum(units_per_text, MAX_CHUNKS_COUNTED), minlength=MAX_CHUNKS_COUNTED + 1
        )

    def numbers(self) -> dict[str, float]:
        """The split's figures: the stage's metrics, per split."""
        return {
            "sentences": self.sentences,
            "chunks": self.units,
            "chunked_sentences": self.chunked,
            "truncated_chunks": self.truncated,
            "tokens": self.unit_tokens,
            "min_length": self.min_length or 0,
            "mean_length": self.unit_tokens / self.units if self.units else 0.0,
            "max_length": self.max_seen,
            "text_tokens": self.text_tokens,
            "truncation_dropped_share": 1 - self.kept_by_truncation / self.text_tokens if self.text_tokens else 0.0,
        }

    def histograms(self) -> dict[str, Any]:
        """Texts by token length before chunking (``counts[i]``: at most ``edges[i]`` tokens and more than the
        edge before; the last count is past the last edge), and texts by their number of chunks (1 up)."""
        return {
            "text_length": {"edges": LENGTH_EDGES.tolist(), "counts": self.length_counts.tolist()},
            "chunks_per_text": {
                "chunks": list(range(1, MAX_CHUNKS_COUNTED + 1)),
                "counts": self.chunk_counts[1:].tolist(),
            },
        }


def first_windows(owners: list[int], windows: list[list[int]], units: int) -> tuple[list[list[int]], np.ndarray]:
    """The first window of each unit, and whether the unit had more (the student's tokenizer made it longer than
    ``max_length``, so training sees it truncated)."""
    owner = np.asarray(owners, dtype=np.int64)
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return [windows[index] for index in first.tolist()], np.bincount(owner, minlength=units) > 1


def tokenize_batch(tokenizer: Any, chunker: Chunker, texts: list[str], max_length: int, stats: SplitStats) -> pa.Table:
    """One batch of distinct texts as token rows, a row per unit, and their figures added to ``stats``."""
    chunked = chunker.split(texts)
    units = [unit for text in chunked for unit in text.units]
    owners, windows = chunk_batch(tokenizer, units, max_length, 0)
    unit_tokens, truncated = first_windows(owners, windows, len(units))
    units_per_text = np.fromiter((len(text.units) for text in chunked), dtype=np.int64, count=len(chunked))
    text_of_unit = np.repeat(np.arange(len(chunked)), units_per_text)
    unit_lengths = np.fromiter((len(ids) for ids in unit_tokens), dtype=np.int32, count=len(units))
    text_lengths = unit_lengths.astype(np.int64)[np.r_[0, np.cumsum(units_per_text)[:-1]]]
    truncated_text = np.bincount(text_of_unit, weights=truncated, minlength=len(chunked)) > 0
    whole = np.flatnonzero((units_per_text > 1) | truncated_text)
    if len(whole):  # their length before chunking, in the student's tokens
        counted = tokenizer([chunked[i].text for i in whole.tolist()], return_attention_mask=False, verbose=False)
        text_lengths[whole] = [len(ids) for ids in counted["input_ids"]]
    stats.add(unit_lengths, text_lengths, units_per_text, int(truncated.sum()))
    text_ids = [text.text_id for text in chunked]
    unit_ids = [unit_id for text in chunked for unit_id in ([None] if len(text.units) == 1 else text.unit_ids())]
    return pa.table(
        {
            "sentence_id": [text_ids[index] for index in text_of_unit.tolist()],
            "chunk": chunk_numbers(text_of_unit),
            "unit_id": unit_ids,
            "input_ids": pa.array(unit_tokens, pa.list_(pa.int32())),
            "length": unit_lengths,
        },
        schema=TOKEN_SCHEMA,
    )


def tokenize_split(tokenizer: Any, chunker: Chunker, source: Path, destination: Path, max_length: int) -> SplitStats:
    """Write the distinct texts of one raw split as token rows, one per unit, in the order the texts first occur.

    Two streaming passes: the first finds each distinct text's first row from 8-byte id prefixes (as
    precompute counts them), the second chunks and tokenizes those rows in batches (``BATCH_SENTENCES`` texts or
    ``BATCH_CHARS`` of text); memory holds one batch and 17 bytes a row, never the texts.
    """
    prefixes = id_prefixes([source])
    first_rows = np.unique(prefixes, return_index=True)[1]
    keep = np.zeros(len(prefixes), dtype=bool)
    keep[first_rows] = True
    del prefixes, first_rows
    stats = SplitStats(max_length)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(destination, TOKEN_SCHEMA, compression="zstd") as writer:
        distinct = (text for row, text in enumerate(iter_sentences([source])) if keep[row])
        for batch in text_batches(distinct, BATCH_SENTENCES):
            writer.write_table(tokenize_batch(tokenizer, chunker, batch, max_length, stats))
    return stats


def run(cfg: Params) -> dict[str, float | str]:
    params = cfg.tokenize
    require_passed()
    files = split_files(params.datasets, params.splits)
    tokenizer = load_tokenizer(cfg)
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < params.max_length:
        raise UserError(
            f"tokenize.max_length: must be <= the tokenizer's model_max_length ({model_max}), got {params.max_length}"
        )

    chunker = teachers.chunker(cfg)
    results: dict[str, float | str] = {"tokenize.vocab_size": len(tokenizer)}
    stats: dict[str, dict[str, Any]] = {}
    with atomic_dir(TOKENS_DIR) as out:
        tokenizer.save_pretrained(str(out / TOKENIZER_DIR.name))
        for source in files:
            dataset, split = source.parent.name, source.stem
            split_stats = tokenize_split(
                tokenizer, chunker, source, out / dataset / f"{split}.parquet", params.max_length
            )
            numbers = split_stats.numbers()
            stats[f"{dataset}/{split}"] = {**numbers, **split_stats.histograms()}
            results.update({f"tokenize.{dataset}.{split}.{key}": value for key, value in numbers.items()})
            log.info(
                "%s/%s: %d texts, %d chunked into %d chunks, %d truncated, length %d/%.1f/%d (min/mean/max)",
                dataset,
                split,
                numbers["sentences"],
                numbers["chunked_sentences"],
                numbers["chunks"],
                numbers["truncated_chunks"],
                numbers["min_length"],
                numbers["mean_length"],
                numbers["max_length"],
            )
            if numbers["truncated_chunks"]:
                log.warning(
                    "%s/%s: %d chunks are longer than tokenize.max_length (%d) in the student's tokens and are "
                    "truncated (chunks are cut by the teacher's tokenizer; the student's makes more tokens of them)",
                    dataset,
                    split,
                    numbers["truncated_chunks"],
                    params.max_length,
                )
        write_json(
            out / TOKEN_STATS_PATH.name,
            {
                "tokenizer": params.train_vocab or params.tokenizer,
                "vocab_size": len(tokenizer),
                "max_length": params.max_length,
                "chunk_overlap": params.chunk_overlap,
                "splits": stats,
            },
        )
    for key in ("chunked_sentences", "chunks", "truncated_chunks", "tokens"):
        results[f"tokenize.{key}"] = sum(split[key] for split in stats.values())
    return results
