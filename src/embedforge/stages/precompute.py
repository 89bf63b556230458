"""precompute: run the teacher once over every distinct sentence and cache the vectors as parquet shards.

Sentences are hash-partitioned into shards, so each shard can be gathered,
encoded and written on its own: memory grows with the shard size, not the
corpus, and a killed run resumes by skipping the shards that are already
complete. One pass over the corpus spills each unfinished partition's sentences
to its own file, so gathering costs one read of the corpus whatever the number
of shards. Within a shard, sentences are encoded in length order to cut padding.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from embedforge.config import Params
from embedforge.data.gate import require_passed
from embedforge.data.sentences import id_prefixes, iter_sentences, partition_of, sentence_id, split_files
from embedforge.embeddings import MANIFEST_NAME, ShardInfo, shard_name, write_shard
from embedforge.errors import DataError, UserError
from embedforge.files import sha256_file, write_json
from embedforge.models import teacher as teachers
from embedforge.paths import EMBEDDINGS_DIR

log = logging.getLogger(__name__)

BatchHook = Callable[[int], None]


@dataclass(frozen=True)
class Plan:
    """How the corpus splits into shards; every number here is a pure function of the input data."""

    sentences: int
    unique: int
    partitions: int
    content_hashes: list[str]

    @classmethod
    def of(cls, prefixes: np.ndarray, shard_size: int) -> Plan:
        unique = np.unique(prefixes)
        partitions = max(1, math.ceil(len(unique) / shard_size))
        members = unique % np.uint64(partitions)
        grouped = unique[np.argsort(members, kind="stable")]  # each partition's prefixes, still ascending
        bounds = np.r_[0, np.cumsum(np.bincount(members.astype(np.int64), minlength=partitions))]
        hashes = [
            hashlib.blake2b(grouped[bounds[index] : bounds[index + 1]].tobytes()).hexdigest()
            for index in range(partitions)
        ]
        return cls(len(prefixes), len(unique), partitions, hashes)


SPILL_DIR = ".spill"  # inside the cache directory, removed when the run ends (or at the next start)
SPILL_SCHEMA = pa.schema([pa.field("sentence_id", pa.string()), pa.field("text", pa.string())])
SPILL_ROWS = 4096  # sentences buffered per partition before they are appended to its spill file


def spill_partitions(files: list[Path], partitions: int, wanted: set[int], directory: Path) -> dict[int, Path]:
    """One pass over ``files``: every sentence of a ``wanted`` partition appended to that partition's spill file.

    Memory holds ``SPILL_ROWS`` sentences per partition, whatever the corpus size.
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

    try:
        for text in iter_sentences(files):
            identifier = sentence_id(text)
            partition = partition_of(identifier, partitions)
            if partition not in buffers:
                continue
            ids, texts = buffers[partition]
            ids.append(identifier)
            texts.append(text)
            if len(ids) >= SPILL_ROWS:
                flush(partition)
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


def check_compatible(directory: Path, info: ShardInfo) -> None:
    """Refuse to mix shards of another teacher, width, dtype or normalisation into this cache."""
    for path in sorted(directory.glob("part-*.parquet")):
        found = ShardInfo.read(path)
        if found is None:
            continue
        differences = [
            f"{name} {getattr(found, name)!r} (now {getattr(info, name)!r})"
            for name in ("teacher_fingerprint", "dim", "dtype", "normalized")
            if getattr(found, name) != getattr(info, name)
        ]
        if differences:
            raise UserError(
                f"{path} was written with a different teacher setup: {', '.join(differences)}. "
                f"Refusing to mix the two; to start this cache afresh, delete it: rm -r {directory}"
            )


def encode_partition(
    model,
    ids: list[str],
    texts: list[str],
    batch_size: int,
    normalize: bool,
    progress: tqdm,
    on_batch: BatchHook | None,
) -> np.ndarray:
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for batch_index, start in enumerate(range(0, len(texts), batch_size)):
        batch = texts[start : start + batch_size]
        vectors[start : start + len(batch)] = model.encode(
            batch, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True, show_progress_bar=False
        )
        progress.update(len(batch))
        if on_batch is not None:
            on_batch(batch_index)
    broken = ~np.isfinite(vectors).all(axis=1)
    if broken.any():
        row = int(np.argmax(broken))
        raise DataError(
            f"the teacher produced a non-finite (NaN/inf) embedding for sentence {ids[row]} {texts[row]!r}; "
            f"check the teacher's weights and the precompute.precision setting"
        )
    return vectors


def run(cfg: Params, on_batch: BatchHook | None = None) -> dict[str, float | str]:
    """Build or resume data/embeddings/<teacher>/; ``on_batch`` is called after every encoded batch."""
    params = cfg.precompute
    require_passed()
    teacher = teachers.resolve(params.teacher)
    files = split_files(params.datasets, params.splits)
    device = teachers.pick_device(params.device)
    backend = teachers.pick_backend(params.backend, device)
    model = teachers.load(teacher, device, params.precision, backend)
    dim = model.get_embedding_dimension()

    started = time.perf_counter()
    plan = Plan.of(id_prefixes(files), params.shard_size)
    directory = EMBEDDINGS_DIR / teacher.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)

    def shard_info(partition: int) -> ShardInfo:
        return ShardInfo(
            teacher.fingerprint,
            dim,
            params.dtype,
            params.normalize,
            plan.partitions,
            partition,
            plan.content_hashes[partition],
        )

    check_compatible(directory, shard_info(0))
    for stale in directory.glob("part-*.parquet"):
        if int(stale.stem.split("-")[1]) >= plan.partitions:
            stale.unlink()

    finished = {
        partition
        for partition in range(plan.partitions)
        if ShardInfo.read(directory / shard_name(partition)) == shard_info(partition)
    }
    spill_dir = directory / SPILL_DIR
    shutil.rmtree(spill_dir, ignore_errors=True)  # a killed run's leftovers
    shards, encoded = [], 0
    encode_seconds = 0.0
    try:
        unfinished = set(range(plan.partitions)) - finished
        spills = spill_partitions(files, plan.partitions, unfinished, spill_dir) if unfinished else {}
        with tqdm(total=plan.unique, unit="sent", desc=f"precompute {teacher.name}", smoothing=0.1) as progress:
            for partition in range(plan.partitions):
                path = directory / shard_name(partition)
                if partition in finished:
                    rows = _rows(path)
                    progress.update(rows)
                else:
                    ids, texts = gather_partition(spills[partition], model.tokenizer)
                    encode_started = time.perf_counter()
                    vectors = encode_partition(
                        model, ids, texts, params.batch_size, params.normalize, progress, on_batch
                    )
                    encode_seconds += time.perf_counter() - encode_started
                    write_shard(path, ids, texts, vectors, shard_info(partition))
                    spills[partition].unlink()
                    rows, encoded = len(ids), encoded + len(ids)
                shards.append({"file": path.name, "rows": rows, "sha256": sha256_file(path)})
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    reused = len(finished)

    seconds = time.perf_counter() - started
    if sum(shard["rows"] for shard in shards) != plan.unique:
        raise DataError(f"{directory}: shards hold {sum(s['rows'] for s in shards)} rows, expected {plan.unique}")
    write_json(
        directory / MANIFEST_NAME,
        {
            "teacher": {"spec": teacher.spec, "name": teacher.name, "fingerprint": teacher.fingerprint},
            "dim": dim,
            "dtype": params.dtype,
            "normalized": params.normalize,
            "sentences": plan.sentences,
            "unique_sentences": plan.unique,
            "inputs": [str(path) for path in files],
            "shards": shards,
        },
    )
    bytes_on_disk = sum((directory / shard["file"]).stat().st_size for shard in shards)
    log.info(
        "%d sentences, %d distinct, %d shards (%d reused), %.1f MB, %.0f sentences/s",
        plan.sentences,
        plan.unique,
        len(shards),
        reused,
        bytes_on_disk / 2**20,
        plan.sentences / seconds,
    )
    return {
        "precompute.sentences": plan.sentences,
        "precompute.unique_sentences": plan.unique,
        "precompute.shards": len(shards),
        "precompute.shards_reused": reused,
        "precompute.bytes_on_disk": bytes_on_disk,
        "precompute.sentences_per_s": plan.sentences / seconds,
        "precompute.encoded_per_s": encoded / encode_seconds if encode_seconds else 0.0,
        "teacher.name": teacher.name,
        "teacher.fingerprint": teacher.fingerprint,
        "precompute.device_used": device,
        "precompute.backend_used": backend,
    }


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
