"""The common schemas every raw split is normalised to, one per kind of dataset.

Pairs (``pairs_nli``, ``pairs_score``) share one table shape:
``pair_id, sentence1, sentence2, label, score, genre`` with ``label`` null where a
dataset has no labels and ``score`` null where it has no scores; scores keep their
dataset's own scale. A ``sentences`` corpus is ``text_id, text``; ``documents`` are ``id, text, title``
(``title`` null where a document has none); ``queries`` are ``query_id, query, relevant``, ``relevant``
the list of ids of the documents that answer the query.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from embedforge.errors import UserError
from embedforge.paths import RAW_DIR

RAW_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("sentence1", pa.string()),
        pa.field("sentence2", pa.string()),
        pa.field("label", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("genre", pa.string()),
    ]
)
RAW_COLUMNS = RAW_SCHEMA.names
SENTENCES_SCHEMA = pa.schema([pa.field("text_id", pa.string(), nullable=False), pa.field("text", pa.string())])
SENTENCES_COLUMNS = SENTENCES_SCHEMA.names
DOCUMENTS_SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string()), pa.field("title", pa.string())]
)
QUERIES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string()),
        pa.field("relevant", pa.list_(pa.string())),
    ]
)
KIND_SCHEMAS = {
    "sentences": SENTENCES_SCHEMA,
    "pairs_nli": RAW_SCHEMA,
    "pairs_score": RAW_SCHEMA,
    "documents": DOCUMENTS_SCHEMA,
    "queries": QUERIES_SCHEMA,
}
# Every column that holds a text to embed, in any kind's schema: what precompute and tokenize read (a document's
# title is folded into its text, ``sentences.document_text``; queries are embedded by evaluation alone).
TEXT_COLUMNS = ("sentence1", "sentence2", "text")
TITLE_COLUMN = "title"


def raw_schema(kind: str) -> pa.Schema:
    return KIND_SCHEMAS[kind]


def raw_split_path(dataset: str, split: str, root: Path = RAW_DIR) -> Path:
    return root / dataset / f"{split}.parquet"


def downloaded_split(spec: str, key: str) -> tuple[str, Path]:
    """A param naming a raw split as ``<dataset>/<split>`` -> (dataset, its file), which must exist.

    ``stsb/validation`` -> ("stsb", data/raw/stsb/validation.parquet); otherwise the error names ``key``.
    """
    dataset, _, split = spec.partition("/")
    path = raw_split_path(dataset, split)
    if not split or not path.is_file():
        raise UserError(f"{key}: {spec!r} is not a downloaded <dataset>/<split> ({path} missing)")
    return dataset, path


def comparable(column: pd.Series) -> pd.Series:
    """Texts with case and whitespace differences removed; a null stays null (also when every one is:
    pandas' ``.str.join`` refuses the all-NaN float column that ``.str.split`` makes of it)."""
    return column.str.casefold().str.split().map(" ".join, na_action="ignore").astype("str")


def pair_keys(frame: pd.DataFrame) -> pd.Series:
    """Case- and whitespace-insensitive identity of a sentence pair, for duplicate and leakage checks."""
    return comparable(frame["sentence1"]) + "\t" + comparable(frame["sentence2"])


def row_keys(frame: pd.DataFrame) -> pd.Series:
    """What makes two rows the same: the pair of a pairs split, the query of a queries split, else the text."""
    if "sentence1" in frame:
        return pair_keys(frame)
    return comparable(frame["query"] if "query" in frame else frame["text"])
