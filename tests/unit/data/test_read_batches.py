"""Batches bounded by bytes as well as rows: a file of long documents is read, cut and tokenized a few
documents at a time, a file of sentences exactly as before."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge import files
from embedforge.data import readers, sentences
from embedforge.data.sources import hub

LONG = [
    f"document {number}: " + "a fairly long sentence about nothing in particular. " * 19 + "The end."
    for number in range(40)
]


def write(path, fmt: str, texts: list[str]) -> None:
    frame = pd.DataFrame({"text": texts})
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    else:
        path.write_text("\n".join(texts) + "\n")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "txt"])
def test_long_records_come_fewer_a_batch_and_sentences_as_before(tmp_path, monkeypatch, fmt):
    budget = 5 * len(LONG[0])  # bytes: about five long documents a batch
    for module in (files, readers):
        monkeypatch.setattr(module, "BATCH_BYTES", budget)
    monkeypatch.setattr(readers, "BATCH_ROWS", 30)
    long_file = tmp_path / f"long.{fmt}{'.gz' if fmt == 'jsonl' else ''}"
    write(long_file, fmt, LONG)
    batches = list(readers.read_batches(long_file, fmt))
    assert pd.concat([batch.frame for batch in batches])["text"].tolist() == LONG
    assert [batch.first_row for batch in batches] == [
        sum(len(b.frame) for b in batches[:i]) for i in range(len(batches))
    ]
    assert max(len(batch.frame) for batch in batches) <= 6 and len(batches) >= 7

    short = [f"sentence {number}." for number in range(70)]
    short_file = tmp_path / f"short.{fmt}{'.gz' if fmt == 'jsonl' else ''}"
    write(short_file, fmt, short)
    assert [len(batch.frame) for batch in readers.read_batches(short_file, fmt)] == [30, 30, 10]  # the row cap


def test_parquet_batches_reckon_the_bytes_of_the_columns_they_read(tmp_path, monkeypatch):
    path = tmp_path / "documents.parquet"
    pq.write_table(pa.table({"id": [str(n) for n in range(40)], "text": LONG}), path)
    text_bytes = pq.ParquetFile(path).metadata.row_group(0).column(1).total_uncompressed_size
    monkeypatch.setattr(files, "BATCH_BYTES", text_bytes // 8)  # an eighth of the texts: 5 rows
    parquet = files.stream_parquet(path)
    assert files.rows_per_batch(parquet.metadata, 100, ["id"]) == 100  # ids are short
    assert 4 <= files.rows_per_batch(parquet.metadata, 1000, ["text"]) <= 5
    assert files.rows_per_batch(parquet.metadata, 3, ["text"]) == 3
    read = list(files.parquet_batches(parquet, 1000, ["text"]))
    assert pa.Table.from_batches(read).column("text").to_pylist() == LONG and len(read) >= 8


def test_a_hub_split_of_long_records_comes_fewer_a_batch(monkeypatch):
    import datasets

    split = datasets.Dataset.from_dict({"text": LONG})
    monkeypatch.setattr(files, "BATCH_BYTES", split.data.nbytes // 10)
    frames = [batch.frame for batch in hub._decoded_batches(split, "hub")]
    assert pd.concat(frames)["text"].tolist() == LONG and max(len(frame) for frame in frames) <= 4


def test_text_batches_close_at_the_count_or_the_characters(monkeypatch):
    monkeypatch.setattr(sentences, "BATCH_CHARS", 100)
    texts = ["x" * 60, "y" * 30, "z" * 20, "w", "v", "u"]
    assert list(sentences.text_batches(texts, 2)) == [texts[:2], [texts[2], "w"], ["v", "u"]]
    assert list(sentences.text_batches(texts, 10)) == [texts[:3], texts[3:]]
    assert list(sentences.text_batches([], 10)) == []
