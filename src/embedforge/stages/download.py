"""download: fetch every declared dataset and normalise each split to its kind's common raw schema.

Writes ``data/raw/<dataset>/<split>.parquet`` and ``data/raw/manifest.json`` (source,
sha256 of inputs and outputs, row counts, the hub commit each hub split was read at)
as one atomic directory. A split streams through in batches: its normalised rows are
staged to disk first, then the seeded ``download.limit`` sample and the drop of train
rows that repeat an evaluation row are applied in one more streaming pass, so memory
does not grow with the size of a corpus. A documents dataset that queries search is not sampled, so
that every relevant id of a query kept stays a document.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.config import TRAIN_SPLIT, VALIDATION_SPLIT, DatasetSource, DownloadParams, Params
from embedforge.data.readers import BATCH_ROWS
from embedforge.data.schema import raw_schema, raw_split_path, row_keys
from embedforge.data.sources import Source, SplitNotFound, make_sources, normalise
from embedforge.errors import DataError
from embedforge.files import atomic_dir, parquet_batches, sha256_file, stream_parquet, write_json
from embedforge.paths import RAW_DIR

log = logging.getLogger(__name__)

STAGED_SUFFIX = ".staged.parquet"


class SplitWriter:
    """The rows of one split, appended batch by batch to a parquet file of its kind's schema."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The table's schema carries pandas' column types, so a split reads back as it was written.
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.rows += len(frame)

    def close(self) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            empty = pd.DataFrame({field.name: pd.Series(dtype=field.type.to_pandas_dtype()) for field in self.schema})
            pq.write_table(pa.Table.from_pandas(empty, schema=self.schema, preserve_index=False), self.path)
        else:
            self._writer.close()


def sample_mask(rows: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Which of ``rows`` rows a seeded sample of ``limit`` keeps, in source order; None keeps them all.

    The draw is pandas' ``DataFrame.sample(n=limit, random_state=seed)``, made without holding the rows.
    """
    if limit is None or rows <= limit:
        return None
    keep = np.zeros(rows, dtype=bool)
    keep[np.random.RandomState(seed).choice(rows, size=limit, replace=False)] = True
    return keep


def carved_out(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Rows that go to the validation split carved out of train: a seeded hash of the row's key below ``fraction``.

    A pure function of the row's text, so duplicates land on the same side and never leak across.
    """
    keys = row_keys(frame).fillna("")
    salt = f"{seed}\t".encode()
    draws = np.fromiter(
        (int.from_bytes(hashlib.blake2b(salt + key.encode(), digest_size=8).digest(), "big") for key in keys),
        dtype=np.uint64,
        count=len(keys),
    )
    return draws < np.uint64(int(fraction * 2**64))


def stage_splits(
    source: Source, dataset: str, spec: DatasetSource, params: DownloadParams, seed: int, out: Path
) -> tuple[dict[str, SplitWriter], dict[str, dict[str, Any]], list[str]]:
    """Read and normalise every split of ``dataset`` into staged files; return their writers, records and skips."""
    writers: dict[str, SplitWriter] = {}
    records: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    schema = raw_schema(spec.kind)

    def writer(split: str) -> SplitWriter:
        if split not in writers:
            writers[split] = SplitWriter(out / dataset / f".{split}{STAGED_SUFFIX}", schema)
        return writers[split]

    for split in spec.split_sources():
        try:
            loaded = source.load(dataset, split)
        except SplitNotFound as missing:
            if split in params.optional_splits:
                log.warning("%s/%s: not in the %s source (%s), skipped", dataset, split, source.kind, missing)
                skipped.append(split)
                continue
            raise DataError(
                f"{dataset}/{split}: not found in the {source.kind} source ({missing}); "
                f"remove it from download.datasets.{dataset}.splits or add it to download.optional_splits"
            ) from None
        record = records[split] = {"source_rows": 0, "dropped_unlabelled": 0, **loaded.provenance}
        carve = spec.validation_fraction if split == TRAIN_SPLIT else None
        if carve is not None:
            records[VALIDATION_SPLIT] = {"carved_from": TRAIN_SPLIT, "validation_fraction": carve}
        writer(split)
        for batch in loaded.batches:
            frame, unlabelled = normalise(dataset, split, batch, spec)
            record["source_rows"] += len(batch.frame)
            record["dropped_unlabelled"] += unlabelled
            if carve is None:
                writer(split).write(frame)
                continue
            held = carved_out(frame, carve, seed)
            writer(VALIDATION_SPLIT).write(frame[held])
            writer(split).write(frame[~held])
    for staged in writers.values():
        staged.close()
    return writers, records, skipped


def finish_split(
    staged: SplitWriter, final: Path, limit: int | None, seed: int, held_out: dict[str, set[str]] | None = None
) -> tuple[int, dict[str, int]]:
    """Turn a staged split into its final file: the seeded sample of ``limit`` rows, less every row whose key is
    in one of the ``held_out`` splits' keys.

    Returns how many rows were removed, and how many for each held-out split (a row in two counts in both).
    """
    held_out = {split: keys for split, keys in (held_out or {}).items() if keys}
    keep = sample_mask(staged.rows, limit, seed)
    removed, by_split = 0, dict.fromkeys(held_out, 0)
    if keep is None and not held_out:
        os.replace(staged.path, final)
        return removed, by_split
    result = SplitWriter(final, staged.schema)
    start = 0
    for batch in parquet_batches(stream_parquet(staged.path), BATCH_ROWS):
        frame = batch.to_pandas()
        rows = np.arange(start, start + len(frame))
        start += len(frame)
        if keep is not None:
            frame = frame[keep[rows]]
        if held_out:
            keys = row_keys(frame)
            leaked = np.zeros(len(frame), dtype=bool)
            for split, split_keys in held_out.items():
                in_split = keys.isin(split_keys).to_numpy()
                by_split[split] += int(in_split.sum())
                leaked |= in_split
            removed += int(leaked.sum())
            frame = frame[~leaked]
        result.write(frame.reset_index(drop=True))
    result.close()
    staged.path.unlink()
    return removed, by_split


def read_keys(path: Path) -> set[str]:
    """``row_keys`` of every row of a raw split."""
    keys: set[str] = set()
    for batch in parquet_batches(stream_parquet(path), BATCH_ROWS):
        keys.update(row_keys(batch.to_pandas()).dropna())
    return keys


def run(cfg: Params) -> dict[str, float]:
    params = cfg.download
    sources = make_sources(params)
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
            writers, records, skipped = stage_splits(sources[dataset], dataset, spec, params, cfg.seed, out)
            limit = None if dataset in searched_documents(params) else params.limit
            evaluation = [split for split in writers if split != TRAIN_SPLIT]
            for split in evaluation:
                finish_split(writers[split], raw_split_path(dataset, split, out), limit, cfg.seed, None)
            if TRAIN_SPLIT in writers:
                held_out = None
                if params.drop_eval_overlap_from_train:
                    held_out = {split: read_keys(raw_split_path(dataset, split, out)) for split in evaluation}
                removed, by_split = finish_split(
                    writers[TRAIN_SPLIT], raw_split_path(dataset, TRAIN_SPLIT, out), limit, cfg.seed, held_out
                )
                if params.drop_eval_overlap_from_train:
                    by_split = {split: by_split.get(split, 0) for split in evaluation}
                    records[TRAIN_SPLIT].update(dropped_eval_overlap=removed, dropped_eval_overlap_by_split=by_split)
                    metrics.update({f"dropped_eval_overlap.{dataset}.{split}": n for split, n in by_split.items()})
                    log_overlap(dataset, removed, by_split)
            for split in writers:
                path = raw_split_path(dataset, split, out)
                rows = pq.ParquetFile(path).metadata.num_rows
                records[split].update(
                    rows=rows, output=str(raw_split_path(dataset, split)), output_sha256=sha256_file(path)
                )
                metrics[f"rows.{dataset}.{split}"] = rows
                log.info("%s/%s: %d rows", dataset, split, rows)
            manifest["datasets"][dataset] = {split: records[split] for split in writers}
            if skipped:
                manifest["skipped"][dataset] = skipped
        write_json(out / "manifest.json", manifest)
    metrics["rows.total"] = sum(value for key, value in metrics.items() if key.startswith("rows."))
    return metrics


def searched_documents(params: DownloadParams) -> set[str]:
    """The documents datasets a queries dataset names: download.limit leaves them whole, so that every relevant id
    of a (sampled) query stays a document."""
    return {spec.documents for spec in params.datasets.values() if spec.kind == "queries" and spec.documents}


def log_overlap(dataset: str, removed: int, by_split: dict[str, int]) -> None:
    """Say what left train, so a user who counts rows is not left to guess (download.drop_eval_overlap_from_train)."""
    if removed:
        where = ", ".join(f"{count} in {dataset}/{split}" for split, count in by_split.items() if count)
        log.info(
            "%s/train: dropped %d rows that also occur in an evaluation split (%s); "
            "download.drop_eval_overlap_from_train: false keeps them",
            dataset,
            removed,
            where,
        )
