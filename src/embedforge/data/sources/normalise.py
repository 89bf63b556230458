"""A source's native frames onto their kind's common schema, through the dataset's column map.

Each source returns a split as frames in the dataset's *native* columns (``premise``/``hypothesis`` for SNLI,
whatever a user's file holds, ...); ``normalise`` maps them onto the common columns, so every source shares
one code path after loading. A built-in with no ``columns`` is matched by its known native spellings.

A queries dataset's ``relevant`` may be one id, a list of ids, or a JSON list of them in a string (CSV): each
becomes a list of id strings.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from embedforge.config import DatasetSource
from embedforge.config.builtin_datasets import BUILTINS
from embedforge.config.datasets import KIND_COLUMNS, REQUIRED_COLUMNS
from embedforge.data.readers import RawBatch
from embedforge.errors import DataError

UNLABELLED = {"-", "", "none", "-1"}


def candidates(dataset: str, source: DatasetSource, common: str) -> tuple[str, ...]:
    """The native names that may hold ``common``: the mapped one, a built-in's spellings, or its own name."""
    if common in source.columns:
        return (source.columns[common],)
    if not source.columns and dataset in BUILTINS:
        return BUILTINS[dataset].native_columns.get(common, ())
    return (common,)


def required_columns(source: DatasetSource) -> list[str]:
    return [
        *REQUIRED_COLUMNS[source.kind],
        *(["score"] if source.has_scores and source.kind != "pairs_score" else []),
        *(["label"] if source.has_labels and source.kind != "pairs_nli" else []),
    ]


def pick_columns(dataset: str, split: str, source: DatasetSource, batch: RawBatch) -> dict[str, str | None]:
    """The native column of every common column; a required (or explicitly mapped) one that is absent is an error."""
    frame = batch.frame
    picked = {
        common: next((name for name in candidates(dataset, source, common) if name in frame.columns), None)
        for common in KIND_COLUMNS[source.kind]
    }
    wanted = [c for c in KIND_COLUMNS[source.kind] if c in required_columns(source) or c in source.columns]
    missing = [common for common in wanted if picked[common] is None]
    if missing:
        found = ", ".join(map(str, frame.columns))
        if source.columns or dataset not in BUILTINS:
            common = missing[0]
            raise DataError(
                f"download.datasets.{dataset}.columns.{common}: {batch.origin} ({dataset}/{split}) has no column "
                f"{candidates(dataset, source, common)[0]!r}; its columns: {found}"
            )
        names = " or ".join(f"'{name}'" for common in missing for name in candidates(dataset, source, common))
        raise DataError(f"{batch.origin}: {dataset}/{split} is missing column {names}; found columns: {found}")
    return picked


def normalise(dataset: str, split: str, batch: RawBatch, source: DatasetSource) -> tuple[pd.DataFrame, int]:
    """Map a native frame onto its kind's common schema; return it and the number of unlabelled rows dropped.

    The frame's index is its rows' positions in the batch (a split column's filter keeps them), so ids and
    errors name the source's own row numbers.
    """
    picked = pick_columns(dataset, split, source, batch)
    frame = batch.frame
    first = batch.earlier_rows + batch.first_row
    ids = pd.Series([f"{split}-{first + row}" for row in frame.index], index=frame.index, dtype="string")
    if source.kind == "sentences":
        out = pd.DataFrame(
            {
                "text_id": frame[picked["text_id"]].astype("string") if picked["text_id"] else ids,
                "text": frame[picked["text"]].astype("string"),
            },
            index=frame.index,
        )
        return out.reset_index(drop=True), 0
    if source.kind == "documents":
        return documents(frame, picked).reset_index(drop=True), 0
    if source.kind == "queries":
        return queries(dataset, split, batch, picked, ids).reset_index(drop=True), 0

    out = pd.DataFrame(index=frame.index)
    out["pair_id"] = frame[picked["pair_id"]].astype("string") if picked["pair_id"] else ids
    builtin = BUILTINS.get(dataset)
    scope = [column for column in builtin.id_scope if column in frame.columns] if builtin else []
    if picked["pair_id"] and scope and not source.columns:
        out["pair_id"] = frame[scope].astype("string").fillna("").agg("-".join, axis=1).astype("string") + (
            "-" + out["pair_id"]
        )
    for text_column in ("sentence1", "sentence2"):
        out[text_column] = frame[picked[text_column]].astype("string")
    labels = map_labels(frame[picked["label"]], source) if picked["label"] else None
    out["label"] = labels
    out["score"] = _numeric(frame, picked["score"], dataset, split, batch) if picked["score"] else None
    out["genre"] = frame[picked["genre"]].astype("string") if picked["genre"] else None
    out = out.astype({"pair_id": "string", "label": "string", "score": "float64", "genre": "string"})

    dropped = 0
    if labels is not None:
        mapped = set((source.labels or {}).values())
        unlabelled = out["label"].isna() | (out["label"].isin(UNLABELLED) & ~out["label"].isin(mapped))
        dropped = int(unlabelled.sum())
        out = out[~unlabelled]
    return out.reset_index(drop=True), dropped


def documents(frame: pd.DataFrame, picked: dict[str, str | None]) -> pd.DataFrame:
    """``id, text, title``; a blank or absent title is null."""
    if picked["title"]:
        title = frame[picked["title"]].astype("string")
        title = title.mask(title.str.strip().eq("").fillna(True))
    else:
        title = pd.Series(pd.NA, index=frame.index, dtype="string")
    return pd.DataFrame(
        {
            "id": frame[picked["id"]].astype("string"),
            "text": frame[picked["text"]].astype("string"),
            "title": title,
        },
        index=frame.index,
    )


def queries(dataset: str, split: str, batch: RawBatch, picked: dict[str, str | None], ids: pd.Series) -> pd.DataFrame:
    """``query_id, query, relevant``: ids generated where the source has none, ``relevant`` as lists of ids."""
    frame = batch.frame
    column = picked["relevant"]
    relevant = []
    for row, value in frame[column].items():
        try:
            relevant.append(relevant_ids(value))
        except ValueError as exc:
            raise DataError(
                f"{batch.origin}: {dataset}/{split} row {batch.first_row + row}: column '{column}' is not an id, "
                f"a list of ids or a JSON list of ids ({exc}): {value!r}"
            ) from None
    return pd.DataFrame(
        {
            "query_id": frame[picked["query_id"]].astype("string") if picked["query_id"] else ids,
            "query": frame[picked["query"]].astype("string"),
            "relevant": pd.Series(relevant, index=frame.index, dtype=object),
        },
        index=frame.index,
    )


def relevant_ids(value: Any) -> list[str]:
    """One row's relevant ids as strings: from an id, a list (or array) of ids, or a string holding a JSON list;
    null and blank ids are left out. A ValueError says what is malformed."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [text] if text else []
        value = json.loads(text)  # a JSONDecodeError is a ValueError
    if isinstance(value, list | tuple | np.ndarray):
        return [text for text in map(id_text, value) if text]
    return [text] if (text := id_text(value)) else []


def id_text(value: Any) -> str:
    """One id as text ("" for a null); a whole float (a number column with nulls) loses its ".0"."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float | np.integer | np.floating):
        return str(value).strip()
    raise ValueError(f"an id is a string or a number, got {type(value).__name__}")


def map_labels(column: pd.Series, source: DatasetSource) -> pd.Series:
    """Native labels as NLI labels through ``labels``; unmapped values stay (lower-cased) for validation to flag."""
    text = column.astype("string").str.strip()
    if not source.labels:
        return text.str.lower()
    return text.map(source.labels, na_action="ignore").fillna(text.str.lower()).astype("string")


def _numeric(frame: pd.DataFrame, column: str, dataset: str, split: str, batch: RawBatch) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna() & (frame[column].astype("string").str.strip() != "")
    if bad.any():
        row = bad.idxmax()
        raise DataError(
            f"{batch.origin}: {dataset}/{split} row {batch.first_row + row}: column '{column}' is not a number: "
            f"{frame[column].loc[row]!r}"
        )
    return values.astype("float64")
