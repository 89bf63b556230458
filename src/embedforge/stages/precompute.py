"""precompute: run the teacher once over every distinct unit and cache the vectors as parquet shards.

A unit is a text that fits ``tokenize.max_length`` tokens, or one chunk of a longer text (``data.chunks``): the
teacher embeds every chunk, keyed by the id of the characters it covers, and never truncates one.

Sentences are hash-partitioned into shards, so each shard can be gathered,
encoded and written on its own: memory grows with the shard size, not the
corpus, and a killed run resumes by skipping the shards that are already
complete. One pass over the corpus spills each unfinished partition's sentences
to its own file, so gathering costs one read of the corpus whatever the number
of shards. Within a shard, sentences are encoded in length order to cut padding.

With ``precompute.workers`` > 1 or a ``precompute.dask_address``, each unfinished
partition is one Dask task that loads the teacher (once per worker process),
encodes its partition and writes its shard; the client plans, spills and writes
the manifest last, as on one worker (``embedforge.embeddings.on_dask`` says what a
remote cluster's workers need to share).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext

from embedforge.config import Params, PrecomputeParams
from embedforge.data.chunks import iter_units, unit_prefixes
from embedforge.data.gate import require_passed
from embedforge.data.sentences import split_files
from embedforge.embeddings import on_dask
from embedforge.embeddings.encoding import BatchHook, Outcome
from embedforge.embeddings.in_process import InProcess
from embedforge.embeddings.on_dask import local_cluster, worker_device
from embedforge.embeddings.plan import Plan, Target
from embedforge.embeddings.spill import SPILL_DIR
from embedforge.models import teacher as teachers
from embedforge.paths import EMBEDDINGS_DIR

# reached through this module by tests and benchmarks, from when they were defined here
__all__ = ["SPILL_DIR", "Plan", "Target", "local_cluster", "run", "worker_device"]

log = logging.getLogger(__name__)


def run(cfg: Params, on_batch: BatchHook | None = None) -> dict[str, float | str]:
    """Build or resume data/embeddings/<teacher>/; ``on_batch`` is called after every encoded batch (in-process
    runs only: on Dask the batches are encoded in the workers)."""
    params = cfg.precompute
    require_passed()
    teacher = teachers.resolve(params.teacher)
    files = split_files(params.datasets, params.splits)
    chunker = teachers.chunker(cfg)
    with executor(params, teacher, on_batch) as running:
        started = time.perf_counter()
        plan = Plan.of(unit_prefixes(files, chunker), params.shard_size)
        target = Target(EMBEDDINGS_DIR / teacher.name, plan, teacher, running.teacher_dim(), params)
        finished = target.prepare()
        with target.spilled(iter_units(files, chunker), finished) as spills, target.progress() as progress:
            outcome = running.build(target, finished, spills, progress)
        seconds = time.perf_counter() - started
        target.write_manifest(files, outcome.shards)
        return metrics(target, outcome, len(finished), seconds)


def executor(
    params: PrecomputeParams, teacher: teachers.TeacherRef, on_batch: BatchHook | None
) -> AbstractContextManager[InProcess | on_dask.OnDask]:
    """The teacher in this process, or Dask workers when ``precompute.workers`` > 1 or a ``dask_address`` asks."""
    if params.workers == 1 and params.dask_address is None:
        return nullcontext(InProcess(params, teacher, on_batch))
    return on_dask.connect(params, teacher)


def metrics(target: Target, outcome: Outcome, reused: int, seconds: float) -> dict[str, float | str]:
    """The run's figures, logged and returned as the stage's metrics (numbers) and tags (strings)."""
    plan, shards = target.plan, outcome.shards
    bytes_on_disk = sum((target.directory / shard["file"]).stat().st_size for shard in shards)
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
        "precompute.encoded_per_s": outcome.encoded / outcome.encode_seconds if outcome.encode_seconds else 0.0,
        "teacher.name": target.teacher.name,
        "teacher.fingerprint": target.teacher.fingerprint,
        "precompute.device_used": ",".join(sorted({device for device, _ in outcome.used})),
        "precompute.backend_used": ",".join(sorted({backend for _, backend in outcome.used})),
        "precompute.workers_used": outcome.workers,
    }
