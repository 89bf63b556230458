"""precompute: run the teacher once over every distinct sentence and cache the vectors as parquet shards.

Sentences are hash-partitioned into shards, so each shard can be gathered,
encoded and written on its own: memory grows with the shard size, not the
corpus, and a killed run resumes by skipping the shards that are already
complete. One pass over the corpus spills each unfinished partition's sentences
to its own file, so gathering costs one read of the corpus whatever the number
of shards. Within a shard, sentences are encoded in length order to cut padding.

With ``precompute.workers`` > 1 or a ``precompute.dask_address``, each unfinished
partition is one Dask task that loads the teacher (once per worker process),
encodes its partition and writes its shard; the client plans, spills and writes
the manifest last, as on one worker. Tasks read their spill files from, and write
their shards to, the cache directory: the workers of a remote cluster need it on a
shared filesystem, at the same path, and the teacher at the same path too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from embedforge import devices
from embedforge.config import Params, PrecomputeParams
from embedforge.data.gate import require_passed
from embedforge.data.sentences import id_prefixes, iter_sentences, partition_of, sentence_id, split_files
from embedforge.embeddings import MANIFEST_NAME, ShardInfo, shard_name, write_shard
from embedforge.embeddings.shards import shard_record
from embedforge.errors import DataError, UserError
from embedforge.files import write_json
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


def encode_shard(
    model,
    spill: Path,
    path: Path,
    info: ShardInfo,
    params: PrecomputeParams,
    progress: tqdm,
    on_batch: BatchHook | None,
) -> tuple[int, float]:
    """Gather one partition from its spill file, encode it and write its shard atomically; (rows, encode seconds)."""
    ids, texts = gather_partition(spill, model.tokenizer)
    started = time.perf_counter()
    vectors = encode_partition(model, ids, texts, params.batch_size, params.normalize, progress, on_batch)
    seconds = time.perf_counter() - started
    write_shard(path, ids, texts, vectors, info)
    spill.unlink()
    return len(ids), seconds


@dataclass(frozen=True)
class Target:
    """This run's cache directory and what each shard in it must record to count as finished."""

    directory: Path
    plan: Plan
    teacher: teachers.TeacherRef
    dim: int
    params: PrecomputeParams

    @property
    def spill_dir(self) -> Path:
        return self.directory / SPILL_DIR

    def shard_path(self, partition: int) -> Path:
        return self.directory / shard_name(partition)

    def shard_info(self, partition: int) -> ShardInfo:
        return ShardInfo(
            self.teacher.fingerprint,
            self.dim,
            self.params.dtype,
            self.params.normalize,
            self.plan.partitions,
            partition,
            self.plan.content_hashes[partition],
        )

    def prepare(self) -> set[int]:
        """Ready the directory for this run and return the partitions whose shards are complete.

        The manifest goes first (an unfinished cache must not look finished), foreign shards are refused,
        and shards beyond the plan, half-written ones and spill files of a killed run are removed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST_NAME).unlink(missing_ok=True)
        check_compatible(self.directory, self.shard_info(0))
        for stale in self.directory.glob("part-*.parquet"):
            if int(stale.stem.split("-")[1]) >= self.plan.partitions:
                stale.unlink()
        for half_written in self.directory.glob(".part-*.tmp"):  # a worker killed inside write_shard
            half_written.unlink()
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        return {
            partition
            for partition in range(self.plan.partitions)
            if ShardInfo.read(self.shard_path(partition)) == self.shard_info(partition)
        }

    def spill(self, files: list[Path], finished: set[int]) -> dict[int, Path]:
        unfinished = set(range(self.plan.partitions)) - finished
        return spill_partitions(files, self.plan.partitions, unfinished, self.spill_dir) if unfinished else {}

    def progress(self) -> tqdm:
        return tqdm(total=self.plan.unique, unit="sent", desc=f"precompute {self.teacher.name}", smoothing=0.1)

    def finish(
        self, files: list[Path], shards: list[dict], reused: int, seconds: float, encoded: int, encode_seconds: float
    ) -> dict[str, float | str]:
        """Check the row count, write the manifest (last: it marks the cache finished) and return the metrics."""
        plan = self.plan
        if sum(shard["rows"] for shard in shards) != plan.unique:
            raise DataError(
                f"{self.directory}: shards hold {sum(s['rows'] for s in shards)} rows, expected {plan.unique}"
            )
        write_json(
            self.directory / MANIFEST_NAME,
            {
                "teacher": {
                    "spec": self.teacher.spec,
                    "name": self.teacher.name,
                    "fingerprint": self.teacher.fingerprint,
                },
                "dim": self.dim,
                "dtype": self.params.dtype,
                "normalized": self.params.normalize,
                "sentences": plan.sentences,
                "unique_sentences": plan.unique,
                "inputs": [str(path) for path in files],
                "shards": shards,
            },
        )
        bytes_on_disk = sum((self.directory / shard["file"]).stat().st_size for shard in shards)
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
            "teacher.name": self.teacher.name,
            "teacher.fingerprint": self.teacher.fingerprint,
        }


def run(cfg: Params, on_batch: BatchHook | None = None) -> dict[str, float | str]:
    """Build or resume data/embeddings/<teacher>/; ``on_batch`` is called after every encoded batch (in-process
    runs only: on Dask the batches are encoded in the workers)."""
    params = cfg.precompute
    require_passed()
    teacher = teachers.resolve(params.teacher)
    files = split_files(params.datasets, params.splits)
    if params.workers == 1 and params.dask_address is None:
        return run_in_process(params, teacher, files, on_batch)
    return run_on_dask(params, teacher, files)


def run_in_process(
    params: PrecomputeParams, teacher: teachers.TeacherRef, files: list[Path], on_batch: BatchHook | None
) -> dict[str, float | str]:
    """One worker: the teacher in this process encodes the unfinished partitions in order."""
    device = devices.pick(params.device, "precompute.device")
    backend = teachers.pick_backend(params.backend, device)
    model = teachers.load(teacher, device, params.precision, backend)

    started = time.perf_counter()
    plan = Plan.of(id_prefixes(files), params.shard_size)
    target = Target(EMBEDDINGS_DIR / teacher.name, plan, teacher, model.get_embedding_dimension(), params)
    finished = target.prepare()
    shards, encoded, encode_seconds = [], 0, 0.0
    try:
        spills = target.spill(files, finished)
        with target.progress() as progress:
            for partition in range(plan.partitions):
                path = target.shard_path(partition)
                if partition in finished:
                    shards.append(shard_record(path))
                    progress.update(shards[-1]["rows"])
                else:
                    info = target.shard_info(partition)
                    rows, seconds = encode_shard(model, spills[partition], path, info, params, progress, on_batch)
                    encoded, encode_seconds = encoded + rows, encode_seconds + seconds
                    shards.append(shard_record(path))
    finally:
        shutil.rmtree(target.spill_dir, ignore_errors=True)
    metrics = target.finish(files, shards, len(finished), time.perf_counter() - started, encoded, encode_seconds)
    return {
        **metrics,
        "precompute.device_used": device,
        "precompute.backend_used": backend,
        "precompute.workers_used": 1,
    }


DASK_CONNECT_TIMEOUT = "5s"
DASK_WORKERS_TIMEOUT_S = 60


@dataclass(frozen=True)
class EncodeJob:
    """What a Dask worker needs to load the teacher and encode partitions, pickled into each task."""

    teacher: teachers.TeacherRef
    params: PrecomputeParams
    workers_by_host: dict[str, int]  # worker processes on each host, which share its CPUs


def run_on_dask(params: PrecomputeParams, teacher: teachers.TeacherRef, files: list[Path]) -> dict[str, float | str]:
    """Many workers: one Dask task per unfinished partition; planning, spilling and the manifest stay here."""
    from distributed import as_completed

    with dask_client(params) as client, leaving_the_worker_thread():
        workers = client.scheduler_info()["workers"]
        # hashed here, once: the pickled ref carries the fingerprint to every worker
        log.info("teacher %s (%s) on %d Dask worker(s)", teacher.name, teacher.fingerprint[:12], len(workers))
        job = EncodeJob(teacher, params, dict(Counter(_host(address) for address in workers)))
        probe = client.submit(worker_teacher_facts, job, pure=False)  # a worker loads the teacher while we plan

        started = time.perf_counter()
        plan = Plan.of(id_prefixes(files), params.shard_size)
        dim, device, backend = probe.result()
        target = Target(EMBEDDINGS_DIR / teacher.name, plan, teacher, dim, params)
        finished = target.prepare()
        shards: dict[int, dict] = {}
        used, encoded, encode_seconds = {(device, backend)}, 0, 0.0
        try:
            spills = target.spill(files, finished)
            with target.progress() as progress:
                for partition in finished:
                    path = target.shard_path(partition)
                    shards[partition] = shard_record(path)
                    progress.update(shards[partition]["rows"])
                futures = {
                    client.submit(
                        encode_shard_task,
                        job,
                        str(spill.absolute()),
                        str(target.shard_path(partition).absolute()),
                        target.shard_info(partition),
                        pure=False,
                    ): partition
                    for partition, spill in spills.items()
                }
                for future in as_completed(futures):
                    done = future.result()
                    shards[futures[future]] = done["record"]
                    used.add((done["device"], done["backend"]))
                    encoded, encode_seconds = encoded + done["record"]["rows"], encode_seconds + done["encode_seconds"]
                    progress.update(done["record"]["rows"])
        finally:
            shutil.rmtree(target.spill_dir, ignore_errors=True)
        ordered = [shards[partition] for partition in sorted(shards)]
        metrics = target.finish(files, ordered, len(finished), time.perf_counter() - started, encoded, encode_seconds)
    return {
        **metrics,
        "precompute.device_used": ",".join(sorted({device for device, _ in used})),
        "precompute.backend_used": ",".join(sorted({backend for _, backend in used})),
        "precompute.workers_used": len(workers),
    }


@contextmanager
def dask_client(params: PrecomputeParams) -> Iterator[Any]:
    """A client of the scheduler at ``precompute.dask_address``, or of a LocalCluster of ``precompute.workers``
    processes started (and stopped) here; either fails, naming the key, before any work."""
    from distributed import Client

    if params.dask_address is None:
        if in_dask_task():
            raise UserError(
                f"precompute.workers ({params.workers}) > 1 starts a LocalCluster, which a task on a Dask worker "
                f"cannot (the flow on a Dask cluster); set precompute.dask_address to that cluster's scheduler"
            )
        with local_cluster(params.workers) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(params.dask_address, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"precompute.dask_address: no Dask scheduler answered at {params.dask_address!r} ({exc}); start one "
            f"(`dask scheduler`, then `dask worker ADDRESS`) or set precompute.dask_address: null"
        ) from None
    with client:
        try:
            client.wait_for_workers(params.workers, timeout=DASK_WORKERS_TIMEOUT_S)
        except TimeoutError:
            found = len(client.scheduler_info()["workers"])
            raise UserError(
                f"precompute.workers: the Dask cluster at {params.dask_address!r} has {found} worker(s) after "
                f"{DASK_WORKERS_TIMEOUT_S} s, fewer than precompute.workers ({params.workers}); start more "
                f"(`dask worker {params.dask_address}`) or lower precompute.workers"
            ) from None
        yield client


def local_cluster(workers: int) -> Any:
    """``workers`` single-threaded worker processes on loopback; the scheduler's HTTP server on any free port
    (without an address it takes 8787, which two clusters at once would fight over)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )


def in_dask_task() -> bool:
    """Whether this code runs inside a Dask task: a stage task of the flow on a Dask cluster."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextmanager
def leaving_the_worker_thread() -> Iterator[None]:
    """Inside a Dask task (the flow on a Dask cluster), free this worker's slot for the teacher's and the
    partitions' tasks while waiting on them: a cluster of one worker would otherwise wait on itself."""
    if not in_dask_task():
        yield
        return
    from distributed import rejoin, secede

    secede()
    try:
        yield
    finally:
        rejoin()


_worker_teachers: dict[tuple[str, str, str, str, str], Any] = {}
_worker_teachers_lock = threading.Lock()


def worker_teacher(job: EncodeJob) -> tuple[Any, str, str]:
    """This worker process's teacher with its device and backend: loaded by its first task, kept for the rest.

    A worker holds one teacher: another teacher, device, precision or backend (the next run on a long-lived
    cluster) replaces it. Its worker processes share the host's CPUs, so torch and ONNX Runtime get a share each.
    """
    import torch
    from distributed import get_worker

    worker = get_worker()
    device = devices.pick(worker_device(job.params.devices, worker.name), "precompute.device")
    backend = teachers.pick_backend(job.params.backend, device)
    key = (job.teacher.spec, job.teacher.fingerprint, device, job.params.precision, backend)
    with _worker_teachers_lock:
        if key not in _worker_teachers:
            threads = max(1, (os.cpu_count() or 1) // job.workers_by_host.get(_host(worker.address), 1))
            torch.set_num_threads(threads)
            _worker_teachers.clear()
            _worker_teachers[key] = teachers.load(job.teacher, device, job.params.precision, backend, threads)
        return _worker_teachers[key], device, backend


def worker_device(requested: list[str], worker_name: str | int) -> str:
    """The device of a worker: the one given, or with several GPUs, the one at its index in the LocalCluster
    (whose workers are named 0, 1, ...; a restarted worker keeps its name, so its GPU)."""
    return requested[0] if len(requested) == 1 else requested[int(worker_name)]


def worker_teacher_facts(job: EncodeJob) -> tuple[int, str, str]:
    """Dask task: (dimension, device, backend) of the teacher as a worker loads it, for the client's plan."""
    model, device, backend = worker_teacher(job)
    return model.get_embedding_dimension(), device, backend


def encode_shard_task(job: EncodeJob, spill: str, path: str, info: ShardInfo) -> dict[str, Any]:
    """Dask task: one partition's shard, written by this worker; what the manifest and metrics need of it."""
    model, device, backend = worker_teacher(job)
    _, seconds = encode_shard(model, Path(spill), Path(path), info, job.params, tqdm(disable=True), None)
    return {
        "record": shard_record(Path(path)),
        "encode_seconds": seconds,
        "device": device,
        "backend": backend,
    }


def _host(address: str) -> str:
    from distributed.comm import get_address_host

    return get_address_host(address)
