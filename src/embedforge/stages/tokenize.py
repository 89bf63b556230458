"""tokenize: turn every distinct sentence into token ids once, so training never tokenizes on the fly.

Writes ``data/tokens/<dataset>/<split>.parquet`` (one row per sentence chunk:
``sentence_id, chunk, input_ids, length``, sorted by id) and the tokenizer the
student must use, ``data/tokens/tokenizer/``: the teacher's, another pretrained
one, or a WordPiece/BPE vocabulary trained here on the training text. A text
longer than ``tokenize.max_length`` tokens becomes several chunks (with
``tokenize.chunk_overlap`` tokens shared between neighbours) instead of being cut.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.config import TRAIN_SPLIT, Params
from embedforge.data.gate import require_passed
from embedforge.data.sentences import id_prefixes, iter_sentences, sentence_id, split_files
from embedforge.errors import UserError
from embedforge.files import atomic_dir, write_json
from embedforge.models import teacher as teachers
from embedforge.paths import TOKENIZER_DIR, TOKENS_DIR

log = logging.getLogger(__name__)

BATCH_SENTENCES = 8192
TOKEN_SCHEMA = pa.schema(
    [
        pa.field("sentence_id", pa.string(), nullable=False),
        pa.field("chunk", pa.int16(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
    ]
)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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


def tokenize_split(tokenizer: Any, source: Path, destination: Path, max_length: int, overlap: int) -> dict[str, float]:
    """Write the distinct sentences of one raw split as token chunks, in the order they first occur; return its
    length statistics.

    Two streaming passes: the first finds each distinct sentence's first row from 8-byte id prefixes (as
    precompute counts them), the second tokenizes those rows in batches; memory holds one batch and 17 bytes a
    row, never the texts.
    """
    prefixes = id_prefixes([source])
    first_rows = np.unique(prefixes, return_index=True)[1]
    keep = np.zeros(len(prefixes), dtype=bool)
    keep[first_rows] = True
    sentences = len(first_rows)
    del prefixes, first_rows
    lengths: list[np.ndarray] = []
    chunked = 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(destination, TOKEN_SCHEMA, compression="zstd") as writer:

        def write(batch_ids: list[str], batch_texts: list[str]) -> None:
            nonlocal chunked
            owners, chunks = chunk_batch(tokenizer, batch_texts, max_length, overlap)
            chunk_index = chunk_numbers(np.asarray(owners))
            chunked += int(np.count_nonzero(chunk_index == 1))
            chunk_lengths = np.fromiter((len(chunk) for chunk in chunks), dtype=np.int32, count=len(chunks))
            lengths.append(chunk_lengths)
            table = {
                "sentence_id": [batch_ids[owner] for owner in owners],
                "chunk": chunk_index,
                "input_ids": pa.array(chunks, pa.list_(pa.int32())),
                "length": chunk_lengths,
            }
            writer.write_table(pa.table(table, schema=TOKEN_SCHEMA))

        batch_ids: list[str] = []
        batch_texts: list[str] = []
        for row, text in enumerate(iter_sentences([source])):
            if not keep[row]:
                continue
            batch_ids.append(sentence_id(text))
            batch_texts.append(text)
            if len(batch_ids) == BATCH_SENTENCES:
                write(batch_ids, batch_texts)
                batch_ids, batch_texts = [], []
        if batch_ids:
            write(batch_ids, batch_texts)
    every = np.concatenate(lengths) if lengths else np.zeros(1, dtype=np.int32)
    return {
        "sentences": sentences,
        "chunks": int(every.size) if lengths else 0,
        "chunked_sentences": chunked,
        "tokens": int(every.sum()),
        "min_length": int(every.min()),
        "mean_length": float(every.mean()),
        "max_length": int(every.max()),
    }


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

    results: dict[str, float | str] = {"tokenize.vocab_size": len(tokenizer)}
    stats: dict[str, dict[str, float]] = {}
    with atomic_dir(TOKENS_DIR) as out:
        tokenizer.save_pretrained(str(out / TOKENIZER_DIR.name))
        for source in files:
            dataset, split = source.parent.name, source.stem
            split_stats = tokenize_split(
                tokenizer, source, out / dataset / f"{split}.parquet", params.max_length, params.chunk_overlap
            )
            stats[f"{dataset}/{split}"] = split_stats
            results.update({f"tokenize.{dataset}.{split}.{key}": value for key, value in split_stats.items()})
            log.info(
                "%s/%s: %d sentences, %d chunked, length %d/%.1f/%d (min/mean/max)",
                dataset,
                split,
                split_stats["sentences"],
                split_stats["chunked_sentences"],
                split_stats["min_length"],
                split_stats["mean_length"],
                split_stats["max_length"],
            )
        write_json(
            out / "stats.json",
            {
                "tokenizer": params.train_vocab or params.tokenizer,
                "vocab_size": len(tokenizer),
                "max_length": params.max_length,
                "chunk_overlap": params.chunk_overlap,
                "splits": stats,
            },
        )
    results["tokenize.chunked_sentences"] = sum(s["chunked_sentences"] for s in stats.values())
    results["tokenize.tokens"] = sum(s["tokens"] for s in stats.values())
    return results
