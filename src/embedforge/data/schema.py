
"""The common schema every raw split is normalised to, and what each dataset allows.

All three datasets are sentence pairs, so one table shape serves them:
``pair_id, sentence1, sentence2, label, score, genre`` with ``label`` null for
STS-B and ``score`` null for SNLI. Scores keep their dataset's own scale.
"""

from __future__ import annotations

from dataclasses import dataclass
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

NLI_LABELS = ("entailment", "neutral", "contradiction")
TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class DatasetSpec:
    """What a normalised split of one dataset must look like."""

    name: str
    labels: tuple[str, ...] | None
    score_range: tuple[float, float] | None


DATASETS: dict[str, DatasetSpec] = {
    "snli": DatasetSpec("snli", labels=NLI_LABELS, score_range=None),
    "stsb": DatasetSpec("stsb", labels=None, score_range=(0.0, 5.0)),
    "sick": DatasetSpec("sick", labels=NLI_LABELS, score_range=(1.0, 5.0)),
}


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


def pair_keys(frame: pd.DataFrame) -> pd.Series:
    """Case- and whitespace-insensitive identity of a sentence pair, for duplicate and leakage checks."""

    def clean(column: pd.Series) -> pd.Series:
        return column.str.casefold().str.split().str.join(" ")

    return clean(frame["sentence1"]) + "\t" + clean(frame["sentence2"])
