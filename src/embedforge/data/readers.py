"""Local files as a stream of frames: parquet, csv, tsv, jsonl and txt (one sentence a line), plain or gzipped.

A file of any size is read ``BATCH_ROWS`` records at a time, or fewer where the records are long
(``files.BATCH_BYTES`` of text a batch), so download's memory grows neither with the corpus nor with
the length of its documents. Each frame comes with the file's row number of its first
record, so a later error can name the file and row; a parse error here names the line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa

from embedforge.errors import DataError, UserError
from embedforge.files import BATCH_BYTES, parquet_batches, rows_within, stream_parquet

BATCH_ROWS = 65_536
SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}
TXT_COLUMN = "text"  # the one column of a .txt file
SAMPLE_BYTES = 1 << 20  # of a CSV file's start, to size its batches by its mean line


@dataclass
class RawBatch:
    """Records in a source's own columns, and where they came from, for errors that name a file and row."""

    frame: pd.DataFrame
    origin: str
    first_row: int = 0  # the source's row number (0-based, blank lines not counted) of the frame's first row
    earlier_rows: int = 0  # the rows of the split's files before this one, so generated ids run on across files


def file_format(path: Path, declared: str, key: str) -> str:
    """The format of ``path``: the declared one, or the one its suffix (before any .gz) names."""
    if declared != "auto":
        return declared
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise UserError(
            f"{key}: cannot tell the format of {path} from its name; set it to one of parquet, csv, tsv, jsonl, txt"
        )
    return found


def open_binary(path: Path) -> IO[bytes]:
    """A file's bytes, gunzipped on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line, decoded as strict UTF-8 (a leading BOM dropped)."""
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path} line {number}: bytes {raw[exc.start : exc.end]!r} are not valid UTF-8; "
                    f"re-save the file as UTF-8"
                ) from None
            yield number, text.rstrip("\r\n")


def read_batches(path: Path, fmt: str) -> Iterator[RawBatch]:
    """Every record of ``path`` in frames of at most ``BATCH_ROWS`` rows and about ``BATCH_BYTES``, in file order."""
    reader = {"parquet": _parquet, "csv": _delimited, "tsv": _delimited, "jsonl": _jsonl, "txt": _txt}[fmt]
    try:
        yield from reader(path, fmt)
    except UnicodeDecodeError:
        for _ in numbered_lines(path):  # raises, naming the first line that is not UTF-8
            pass
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot be read as {fmt} ({exc})") from None


def _parquet(path: Path, fmt: str) -> Iterator[RawBatch]:
    try:
        parquet = stream_parquet(path)
        first = 0
        for batch in parquet_batches(parquet, BATCH_ROWS):
            yield RawBatch(batch.to_pandas(), str(path), first)
            first += batch.num_rows
    except pa.ArrowException as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None


def _delimited(path: Path, fmt: str) -> Iterator[RawBatch]:
    """CSV and TSV with a header row; every field read as text (scores are converted, with a row, later)."""
    first = 0
    try:
        with pd.read_csv(
            path,
            sep="\t" if fmt == "tsv" else ",",
            dtype=str,
            keep_default_na=False,
            chunksize=rows_fitting(path),
            compression="infer",
            encoding="utf-8-sig",
        ) as chunks:
            for chunk in chunks:
                yield RawBatch(chunk.reset_index(drop=True), str(path), first)
                first += len(chunk)
    except pd.errors.EmptyDataError:
        return
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not valid {fmt.upper()} ({str(exc).strip()})") from None


def rows_fitting(path: Path) -> int:
    """``BATCH_ROWS``, or as many of the mean line of the file's first ``SAMPLE_BYTES`` as fit ``BATCH_BYTES``
    (pandas reads CSV in chunks of a fixed number of rows)."""
    with open_binary(path) as handle:
        sample = handle.read(SAMPLE_BYTES)
    return rows_within(BATCH_ROWS, sample.count(b"\n"), len(sample))


def _jsonl(path: Path, fmt: str) -> Iterator[RawBatch]:
    """One JSON object a line; blank lines are skipped."""
    records: list[dict] = []
    first = size = 0
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        size += len(line)
        if len(records) == BATCH_ROWS or size >= BATCH_BYTES:
            yield RawBatch(pd.DataFrame.from_records(records), str(path), first)
            first += len(records)
            records, size = [], 0
    if records:
        yield RawBatch(pd.DataFrame.from_records(records), str(path), first)


def _txt(path: Path, fmt: str) -> Iterator[RawBatch]:
    """One sentence a line, in a column named ``text``; blank lines are skipped."""
    lines: list[str] = []
    first = size = 0
    for _, line in numbered_lines(path):
        if text := line.strip():
            lines.append(text)
            size += len(text)
        if len(lines) == BATCH_ROWS or size >= BATCH_BYTES:
            yield RawBatch(pd.DataFrame({TXT_COLUMN: lines}), str(path), first)
            first += len(lines)
            lines, size = [], 0
    if lines:
        yield RawBatch(pd.DataFrame({TXT_COLUMN: lines}), str(path), first)
