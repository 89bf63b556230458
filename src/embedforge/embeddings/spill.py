"""Spill files: one pass over the corpus sorts each unfinished partition's sentences into a file of its own.

Gathering a partition then reads its spill file alone, so the whole run reads the
corpus once whatever the number of shards, and memory grows with the shard, not the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from embedforge.data.sentences import partition_of

SPILL_DIR = ".spill"  # inside the cache directory, removed when the run ends (or at the next start)
SPILL_SCHEMA = pa.schema([pa.field("sentence_id", pa.string()), pa.field("text", pa.string())])
SPILL_ROWS = 4096  # sentences buffered per partition before they are appended to its spill file
SPILL_BUFFER_ROWS = 131_072  # sentences buffered over all partitions: past it, every buffer is written out


def spill_partitions(
    units: Iterable[tuple[str, str]], partitions: int, wanted: set[int], directory: Path
) -> dict[int, Path]:
    """One pass over ``units`` (``(unit_id, text)``, as ``data.chunks.iter_units`` reads a corpus): every unit of a
    ``wanted`` partition appended to that partition's spill file.

    Memory holds at most ``SPILL_ROWS`` sentences per partition and ``SPILL_BUFFER_ROWS`` in all, whatever the
    corpus size and however many partitions it has (a thousand at 50 million sentences).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {partition: directory / f"{partition:05d}.arrow" for partition in sorted(wanted)}
    buffers: dict[int, tuple[list[str], list[str]]] = {partition: ([], []) for partition in paths}
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def flush(partition: int) -> None:
        ids, texts = buffers[partition]
        if partition not in writers:
            writers[partition] = pa.ipc.new_file(str(paths[partition]), SPILL_SCHEMA)
        writers[partition].write_batch(pa.record_batch([ids, texts], schema=SPILL_SCHEMA))
        ids.clear()
        texts.clear()

    buffered = 0
    try:
        for identifier, text in units:
            partition = partition_of(identifier, partitions)
            if partition not in buffers:
                continue
            ids, texts = buffers[partition]
            ids.append(identifier)
            texts.append(text)
            buffered += 1
            if len(ids) >= SPILL_ROWS:
                buffered -= len(ids)
                flush(partition)
            if buffered >= SPILL_BUFFER_ROWS:
                for waiting, (pending, _) in buffers.items():
                    if pending:
                        flush(waiting)
                buffered = 0
        for partition, (ids, _) in buffers.items():
            if ids or partition not in writers:
                flush(partition)
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def gather_partition(spill: Path, tokenizer) -> tuple[list[str], list[str]]:
    """The distinct sentences of one partition's spill file with their ids, longest in tokens first, so batches
    pad little."""
    with pa.memory_map(str(spill)) as source:
        table = pa.ipc.open_file(source).read_all()
    texts = dict(zip(table.column("sentence_id").to_pylist(), table.column("text").to_pylist(), strict=True))
    ids = list(texts)
    lengths = [len(tokens) for tokens in tokenizer(list(texts.values()), add_special_tokens=True)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [ids[i] for i in order], [texts[ids[i]] for i in order]
