"""download: fetch SNLI, STS-B and SICK and normalise every split to the common raw schema.

Writes ``data/raw/<dataset>/<split>.parquet`` and ``data/raw/manifest.json``
(source, sha256 of inputs and outputs, row counts) as one atomic directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.config import Params
from embedforge.data.schema import RAW_SCHEMA, TRAIN_SPLIT, pair_keys, raw_split_path
from embedforge.data.sources import Source, SplitNotFound, make_source, normalise
from embedforge.errors import DataError
from embedforge.files import atomic_dir, sha256_file, write_json
from embedforge.paths import RAW_DIR

log = logging.getLogger(__name__)


def limit_rows(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``limit`` rows, kept in source order so outputs stay diffable."""
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True)


def drop_eval_overlap(train: pd.DataFrame, evaluation: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Remove train pairs that also occur in an evaluation split, so evaluation never sees training data."""
    if not evaluation:
        return train, 0
    held_out = set(pd.concat([pair_keys(frame) for frame in evaluation]))
    leaked = pair_keys(train).isin(held_out)
    return train[~leaked].reset_index(drop=True), int(leaked.sum())


def load_dataset_splits(
    source: Source, dataset: str, splits: list[str], optional: list[str], limit: int | None, seed: int
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]], list[str]]:
    frames: dict[str, pd.DataFrame] = {}
    records: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for split in splits:
        try:
            loaded = source.load(dataset, split)
        except SplitNotFound as missing:
            if split in optional:
                log.warning("%s/%s: not in the %s source (%s), skipped", dataset, split, source.kind, missing)
                skipped.append(split)
                continue
            raise DataError(
                f"{dataset}/{split}: not found in the {source.kind} source ({missing}); "
                f"remove it from download.datasets.{dataset}.splits or add it to download.optional_splits"
            ) from None
        origin = loaded.provenance.get("source_file") or loaded.provenance.get("hub_id", source.kind)
        frame, unlabelled = normalise(dataset, split, loaded.frame, origin)
        frames[split] = limit_rows(frame, limit, seed)
        records[split] = {"source_rows": len(loaded.frame), "dropped_unlabelled": unlabelled, **loaded.provenance}
    return frames, records, skipped


def write_split(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=RAW_SCHEMA, preserve_index=False), path)


def run(cfg: Params) -> dict[str, float]:
    params = cfg.download
    source = make_source(params)
    manifest: dict[str, Any] = {
        "source": params.source,
        "location": str(Path(params.mirror).resolve()) if params.source == "mirror" else None,
        "limit": params.limit,
        "seed": cfg.seed,
        "datasets": {},
        "skipped": {},
    }
    metrics: dict[str, float] = {}
    with atomic_dir(RAW_DIR) as out:
        for dataset, spec in params.datasets.items():
            frames, records, skipped = load_dataset_splits(
                source, dataset, spec.splits, params.optional_splits, params.limit, cfg.seed
            )
            if params.drop_eval_overlap_from_train and TRAIN_SPLIT in frames:
                evaluation = [frame for split, frame in frames.items() if split != TRAIN_SPLIT]
                frames[TRAIN_SPLIT], removed = drop_eval_overlap(frames[TRAIN_SPLIT], evaluation)
                records[TRAIN_SPLIT]["dropped_eval_overlap"] = removed
            for split, frame in frames.items():
                path = raw_split_path(dataset, split, out)
                write_split(frame, path)
                records[split].update(
                    rows=len(frame), output=str(raw_split_path(dataset, split)), output_sha256=sha256_file(path)
                )
                metrics[f"rows.{dataset}.{split}"] = len(frame)
                log.info("%s/%s: %d rows", dataset, split, len(frame))
            manifest["datasets"][dataset] = records
            if skipped:
                manifest["skipped"][dataset] = skipped
        write_json(out / "manifest.json", manifest)
    metrics["rows.total"] = sum(metrics.values())
    return metrics
