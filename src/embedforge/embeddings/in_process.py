"""The in-process executor: one worker, the teacher loaded in this process."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from embedforge import devices
from embedforge.config import PrecomputeParams
from embedforge.embeddings.encoding import BatchHook, Outcome, encode_shard
from embedforge.embeddings.plan import Target
from embedforge.models import teacher as teachers


class InProcess:
    """One worker: the teacher in this process encodes the unfinished partitions in order.

    The teacher loads here, before the run's clock starts, so sentences_per_s times the corpus and not the load.
    """

    def __init__(self, params: PrecomputeParams, teacher: teachers.TeacherRef, on_batch: BatchHook | None):
        self.params = params
        self.on_batch = on_batch
        self.device = devices.pick(params.device, "precompute.device")
        self.backend = teachers.pick_backend(params.backend, self.device)
        self.model = teachers.load(teacher, self.device, params.precision, self.backend)

    def teacher_dim(self) -> int:
        return self.model.get_embedding_dimension()

    def build(self, target: Target, finished: set[int], spills: dict[int, Path], progress: tqdm) -> Outcome:
        """Every partition in order: a finished shard counted in, an unfinished one encoded and written."""
        outcome = Outcome({(self.device, self.backend)}, workers=1)
        for partition in range(target.plan.partitions):
            path = target.shard_path(partition)
            if partition in finished:
                progress.update(outcome.reuse(partition, path))
                continue
            info = target.shard_info(partition)
            record, seconds = encode_shard(
                self.model, spills[partition], path, info, self.params, progress, self.on_batch
            )
            outcome.add(partition, record, seconds, (self.device, self.backend))
        return outcome
