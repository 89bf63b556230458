"""The relevant ids of a queries split checked against the ids of its documents split.

A queries dataset names its documents dataset (``download.datasets.<name>.documents``) and ``documents_split``
picks the split. That split's ids are hashed once, over the whole split, as ``row_hashes`` hashes a one-column
row; each batch of queries is then looked up in them, as a held-out split is against train for leakage. What
is found reaches Great Expectations as two flag columns: a row with no relevant id, and a row with an id that is
no document of that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedforge.data.row_hashes import in_sorted, row_hashes, split_hashes
from embedforge.data.schema import raw_split_path

DOCUMENT_ID = "id"
RELEVANT = "relevant"
NO_RELEVANT_COLUMN = "relevant_none"
UNKNOWN_RELEVANT_COLUMN = "relevant_unknown"


@dataclass(frozen=True)
class DocumentIds:
    """The documents split a queries split refers to, and its ids as sorted distinct 64-bit hashes (None: the split
    was not downloaded, so no relevant id is a document of it)."""

    dataset: str
    split: str
    hashes: np.ndarray | None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"

    @property
    def path(self) -> Path:
        return raw_split_path(self.dataset, self.split)

    @classmethod
    def read(cls, dataset: str, split: str, batch_rows: int) -> DocumentIds:
        """The ids of ``data/raw/<dataset>/<split>.parquet``, streamed once; a missing file gives no hashes."""
        path = raw_split_path(dataset, split)
        if not path.is_file():
            return cls(dataset, split, None)
        return cls(dataset, split, np.unique(split_hashes(path, [DOCUMENT_ID], exact=True, batch_rows=batch_rows)))


def id_count(ids: Any) -> int:
    """How many ids a ``relevant`` cell holds (a list, an array, or null)."""
    return len(ids) if isinstance(ids, list | tuple | np.ndarray) else 0


def relevance_flags(frame: pd.DataFrame, documents: DocumentIds) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a batch of queries: has it no relevant id, and is one of its ids no document of
    ``documents``? A missing ``relevant`` column flags nothing: its column expectation reports it."""
    if RELEVANT not in frame:
        return np.zeros(len(frame), dtype=bool), np.zeros(len(frame), dtype=bool)
    relevant = frame[RELEVANT]
    none = relevant.map(id_count).to_numpy(dtype=np.int64) == 0
    if documents.hashes is None:
        return none, ~none
    ids = relevant.map(lambda cell: list(cell) if id_count(cell) else []).explode().dropna()
    hashes = row_hashes(pd.DataFrame({DOCUMENT_ID: ids.astype("str").to_numpy()}), [DOCUMENT_ID], exact=True)
    unknown_rows = ids.index[~in_sorted(hashes, documents.hashes)]
    return none, relevant.index.isin(unknown_rows)
