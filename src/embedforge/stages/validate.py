"""Stage `validate`: check every raw split against its dataset's expectations before anything trains on it.

The full report (results.json and, if enabled, GX Data Docs) is written even
when checks fail, because it is what the user needs to fix the data; only then
does the stage raise ValidationFailed with a readable summary.

A queries split is checked against the ids of its documents split, read from that split's raw file on its own,
so it does not wait for (or depend on) the documents split's own validation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.config import TRAIN_SPLIT, DatasetSource, Params, documents_split
from embedforge.data.expectations import SplitValidator, text_columns
from embedforge.data.relevance import DocumentIds
from embedforge.data.row_hashes import split_hashes
from embedforge.data.schema import raw_split_path
from embedforge.data.validation_results import describe_failures
from embedforge.errors import DataError, ValidationFailed
from embedforge.files import atomic_dir, write_json
from embedforge.paths import DATA_DOCS_DIR, RAW_DIR, VALIDATION_DIR, VALIDATION_RESULTS_PATH

log = logging.getLogger(__name__)


def find_splits(datasets: Iterable[str], root: Path = RAW_DIR) -> list[tuple[str, str]]:
    """``(dataset, split)`` of every raw parquet file of a declared dataset, in a stable order."""
    declared = set(datasets)
    return sorted((path.parent.name, path.stem) for path in root.glob("*/*.parquet") if path.parent.name in declared)


def run(cfg: Params) -> dict[str, float]:
    """Validate all raw splits, write data/validation/, and raise ValidationFailed if any check failed."""
    params = cfg.validate_
    splits = find_splits(cfg.download.datasets)
    if not splits:
        raise DataError(f"{RAW_DIR}: no raw splits (<dataset>/<split>.parquet) found: run `embedforge download` first")
    with atomic_dir(VALIDATION_DIR) as out:
        docs_dir = out / DATA_DOCS_DIR.name if params.data_docs else None
        validator = SplitValidator(params, cfg.download.datasets, docs_dir=docs_dir)
        train_hashes = train_split_hashes(splits, cfg.download.datasets, params.batch_rows)
        documents = documents_of(splits, cfg.download.datasets, params.batch_rows)
        results = [
            validator.validate(
                dataset,
                split,
                raw_split_path(dataset, split),
                train=None if split == TRAIN_SPLIT else train_hashes.get(dataset),
                documents=documents.get((dataset, split)),
            )
            for dataset, split in splits
        ]
        if docs_dir is not None:
            validator.build_docs()
            if not (docs_dir / "index.html").is_file():
                raise DataError(f"{DATA_DOCS_DIR}: GX built no index.html; set validate.data_docs=false to skip docs")
        metrics = {
            "validate.splits": len(results),
            "validate.rows": sum(result["rows"] for result in results),
            "validate.expectations": sum(len(result["expectations"]) for result in results),
            "validate.failed_expectations": sum(
                not outcome["success"] for result in results for outcome in result["expectations"]
            ),
        }
        summary = summarize(results, metrics)
        # The outcome only, not the params that produced it (dvc.lock and MLflow keep those): the gated stages
        # depend on this file, and a param change that leaves every outcome as it was must not re-run them.
        report: dict[str, Any] = {
            "success": metrics["validate.failed_expectations"] == 0,
            "summary": summary,
            "metrics": metrics,
            "data_docs": str(DATA_DOCS_DIR / "index.html") if docs_dir is not None else None,
            "splits": results,
        }
        write_json(out / VALIDATION_RESULTS_PATH.relative_to(VALIDATION_DIR), report)

    if not report["success"]:
        raise ValidationFailed(summary)
    log.info(summary)
    return metrics


def train_split_hashes(
    splits: list[tuple[str, str]], datasets: dict[str, DatasetSource], batch_rows: int
) -> dict[str, np.ndarray]:
    """The sorted distinct ``row_hashes`` of each train split that has a held-out split to check for leakage."""
    held_out = {dataset for dataset, split in splits if split != TRAIN_SPLIT}
    return {
        dataset: np.unique(
            split_hashes(
                raw_split_path(dataset, split), text_columns(datasets[dataset]), exact=False, batch_rows=batch_rows
            )
        )
        for dataset, split in splits
        if split == TRAIN_SPLIT and dataset in held_out
    }


def documents_of(
    splits: list[tuple[str, str]], datasets: dict[str, DatasetSource], batch_rows: int
) -> dict[tuple[str, str], DocumentIds]:
    """The documents split of every queries split, its ids read once however many queries splits refer to it."""
    read: dict[tuple[str, str], DocumentIds] = {}
    documents = {}
    for dataset, split in splits:
        if datasets[dataset].kind != "queries":
            continue
        try:
            target = documents_split(dataset, split, datasets)
        except ValueError as exc:  # params checked every declared split; this one is not declared
            raise DataError(f"{raw_split_path(dataset, split)}: {exc}") from None
        if target not in read:
            read[target] = DocumentIds.read(*target, batch_rows=batch_rows)
        documents[dataset, split] = read[target]
    return documents


def summarize(results: list[dict[str, Any]], metrics: dict[str, int]) -> str:
    """One paragraph: what was checked, then each failed dataset/split/expectation with a few offending rows."""
    failures = [line for result in results for line in describe_failures(result)]
    checked = (
        f"{metrics['validate.expectations']} expectations on {metrics['validate.splits']} splits "
        f"({metrics['validate.rows']} rows)"
    )
    if not failures:
        return f"Data validation passed: {checked}."
    return (
        f"Data validation failed: {len(failures)} of {checked} failed, see {VALIDATION_RESULTS_PATH}. "
        + ". ".join(failures)
        + "."
    )
