"""The Dask executor: one task per unfinished partition, on a LocalCluster or the cluster at an address.

Each task loads the teacher (once per worker process), encodes its partition and
writes its shard; the client plans, spills and writes the manifest last, as on one
worker. Tasks read their spill files from, and write their shards to, the cache
directory: the workers of a remote cluster need it on a shared filesystem, at the
same path, and the teacher at the same path too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from embedforge import devices
from embedforge.config import PrecomputeParams
from embedforge.embeddings.encoding import Outcome, encode_shard
from embedforge.embeddings.plan import Target
from embedforge.embeddings.shards import ShardInfo
from embedforge.errors import UserError
from embedforge.models import teacher as teachers

log = logging.getLogger("embedforge.stages.precompute")  # the stage's own lines, under the stage's name

DASK_CONNECT_TIMEOUT = "5s"
DASK_WORKERS_TIMEOUT_S = 60


@dataclass(frozen=True)
class EncodeJob:
    """What a Dask worker needs to load the teacher and encode partitions, pickled into each task."""

    teacher: teachers.TeacherRef
    params: PrecomputeParams
    workers_by_host: dict[str, int]  # worker processes on each host, which share its CPUs


@dataclass(frozen=True)
class OnDask:
    """Many workers: one Dask task per unfinished partition; planning, spilling and the manifest stay here."""

    client: Any
    job: EncodeJob
    probe: Any  # the future of worker_teacher_facts: a worker loads the teacher while the client plans
    workers: int

    def teacher_dim(self) -> int:
        dim, _, _ = self.probe.result()
        return dim

    def build(self, target: Target, finished: set[int], spills: dict[int, Path], progress: tqdm) -> Outcome:
        """The finished shards counted in, then every unfinished partition encoded by a task, as tasks end."""
        from distributed import as_completed

        _, device, backend = self.probe.result()
        outcome = Outcome({(device, backend)}, self.workers)
        for partition in finished:
            progress.update(outcome.reuse(partition, target.shard_path(partition)))
        futures = {
            self.client.submit(
                encode_shard_task,
                self.job,
                str(spill.absolute()),
                str(target.shard_path(partition).absolute()),
                target.shard_info(partition),
                pure=False,
            ): partition
            for partition, spill in spills.items()
        }
        for future in as_completed(futures):
            record, seconds, device, backend = future.result()
            outcome.add(futures[future], record, seconds, (device, backend))
            progress.update(record["rows"])
        return outcome


@contextmanager
def connect(params: PrecomputeParams, teacher: teachers.TeacherRef) -> Iterator[OnDask]:
    """Connected to the cluster, with a worker loading the teacher; the cluster, if started here, stops after."""
    with dask_client(params) as client, leaving_the_worker_thread():
        workers = client.scheduler_info()["workers"]
        # hashed here, once: the pickled ref carries the fingerprint to every worker
        log.info("teacher %s (%s) on %d Dask worker(s)", teacher.name, teacher.fingerprint[:12], len(workers))
        job = EncodeJob(teacher, params, dict(Counter(_host(address) for address in workers)))
        yield OnDask(client, job, client.submit(worker_teacher_facts, job, pure=False), len(workers))


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


def encode_shard_task(job: EncodeJob, spill: str, path: str, info: ShardInfo) -> tuple[dict, float, str, str]:
    """Dask task: one partition's shard, written by this worker; (its manifest record, encode seconds, device,
    backend)."""
    model, device, backend = worker_teacher(job)
    record, seconds = encode_shard(model, Path(spill), Path(path), info, job.params, tqdm(disable=True), None)
    return record, seconds, device, backend


def _host(address: str) -> str:
    from distributed.comm import get_address_host

    return get_address_host(address)
