"""Everything the phases of a training run train and validate on, read once: token rows, the phases' examples
and their batches, the validation batches, and the teacher's vectors of every row a batch uses."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedforge.config import TRAIN_SPLIT, Params, threshold
from embedforge.data.schema import raw_split_path
from embedforge.data.sentences import split_files
from embedforge.embeddings import EmbeddingCache
from embedforge.errors import DataError
from embedforge.paths import CHECKPOINTS_DIR, EMBEDDINGS_DIR, TOKENS_DIR
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.examples import Examples, HeldOut, pair_examples, sentence_examples
from embedforge.training.memory_plan import available_memory
from embedforge.training.phases import Phase, training_phases
from embedforge.training.token_files import NO_ROW, TokenStore
from embedforge.training.validation import STSValidation

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The token rows, the phases and their examples, the batches and the teacher's vectors of a run."""

    store: TokenStore
    phases: list[Phase]
    everything: Examples
    held_out_examples: int  # training examples dropped for naming a held-out text (train.held_out_share)
    all_batches: LengthBucketedBatches
    validation_batches: LengthBucketedBatches | None
    teacher_vectors: torch.Tensor | None
    teacher_dim: int | None
    pad_id: int
    batch_size: int
    seed: int
    bucket_batches: int

    def batches_of(self, examples: Examples, batch_size: int | None = None) -> LengthBucketedBatches:
        """Batches of ``examples``: the ones already built when they are every example at the usual size."""
        size = batch_size or self.batch_size
        if examples is self.everything and size == self.batch_size:
            return self.all_batches
        return LengthBucketedBatches(examples, self.store, size, self.pad_id, self.seed, self.bucket_batches)


def load_training_data(cfg: Params, pad_id: int, teacher_name: str) -> TrainingData:
    """The token rows of every split training reads, the phases' examples and their batches, and the teacher's
    vectors (of ``teacher_name``'s cache) of every row a batch uses (distillation only)."""
    params = cfg.train
    train_files = split_files(params.datasets, [TRAIN_SPLIT])
    validation_files = [
        path for path in (raw_split_path(d, params.validation_split) for d in params.datasets) if path.is_file()
    ]
    sts_file = STSValidation.path_of(params.sts_validation) if params.sts_validation else None
    store = TokenStore.load(TOKENS_DIR, train_files + validation_files + ([sts_file] if sts_file else []))
    held = HeldOut(params.held_out_share, cfg.seed)
    phases = training_phases(params, examples_of(cfg, store, train_files, held), cfg.seed, CHECKPOINTS_DIR)
    log.info("%d training examples name a held-out text (train.held_out_share %g): left out", held.dropped, held.share)
    everything = (
        phases[-1].examples
        if params.schedule == "single"
        else Examples.joined([phase.examples for phase in phases]).in_order()
    )
    all_batches = LengthBucketedBatches(everything, store, params.batch_size, pad_id, cfg.seed, params.bucket_batches)
    validation_batches = None
    if validation_files:
        examples = examples_of(cfg, store, validation_files)
        pooled = Examples.joined(list(examples.values()))
        validation_batches = LengthBucketedBatches(pooled, store, params.batch_size, pad_id, cfg.seed)
    teacher_vectors, teacher_dim = None, None
    if params.distills:
        cache = EmbeddingCache(EMBEDDINGS_DIR / teacher_name)
        needed = used_rows(all_batches, validation_batches)
        teacher_vectors = teacher_matrix(cache, store, needed, available_memory(params, "cpu"))
        teacher_dim = cache.dim
    return TrainingData(
        store=store,
        phases=phases,
        everything=everything,
        held_out_examples=held.dropped,
        all_batches=all_batches,
        validation_batches=validation_batches,
        teacher_vectors=teacher_vectors,
        teacher_dim=teacher_dim,
        pad_id=pad_id,
        batch_size=params.batch_size,
        seed=cfg.seed,
        bucket_batches=params.bucket_batches,
    )


def examples_of(cfg: Params, store: TokenStore, files: list[Path], held: HeldOut | None = None) -> dict[str, Examples]:
    """Each dataset's examples: pairs (with hard negatives unless train.hard_negatives is off) when InfoNCE is on,
    else every distinct sentence: distillation and the causal LM need no pairs. No example names a ``held`` out text.

    Labelled pairs give their entailments; scored pairs those at or above the dataset's similar_min_score
    (else train.similar_min_score).
    """
    params = cfg.train
    by_dataset = {}
    for path in files:
        dataset = path.parent.name
        if not params.uses_pairs:
            by_dataset[dataset] = sentence_examples(TOKENS_DIR, [path], store, params.max_chunks_per_text, held)
            continue
        source = cfg.download.datasets[dataset]
        min_score = threshold(source, "similar_min_score", params.similar_min_score)
        examples = pair_examples(path, source.has_labels, min_score, store, held)
        by_dataset[dataset] = examples if params.hard_negatives else examples.without_negatives()
    return by_dataset


def used_rows(*batches: LengthBucketedBatches | None) -> np.ndarray:
    rows = [
        source[source != NO_ROW]
        for b in batches
        if b is not None
        for source in (b.anchor_rows, b.positive_rows, b.negative_rows)
    ]
    return np.unique(np.concatenate(rows))


def teacher_matrix(cache: EmbeddingCache, store: TokenStore, needed: np.ndarray, budget: int) -> torch.Tensor:
    """The teacher's vector of every TokenStore row (float16); every row in ``needed`` must have one.

    A matrix larger than half of ``budget`` (host memory free, or train.memory_limit_mb) lives in a memory-mapped
    file beside the checkpoints, already unlinked, so the page cache holds what fits and nothing is left behind.
    """
    shape = (len(store), cache.dim)
    if 2 * shape[0] * shape[1] > budget / 2:
        CHECKPOINTS_DIR.mkdir(parents=True, exist_ok=True)
        log.info(
            "teacher vectors: %.0f MB, memory-mapped (budget %.0f MB)", 2 * shape[0] * shape[1] / 2**20, budget / 2**20
        )
        with tempfile.TemporaryFile(dir=CHECKPOINTS_DIR) as backing:  # the map keeps its own handle
            matrix = np.memmap(backing, dtype=np.float16, mode="w+", shape=shape)
    else:
        matrix = np.zeros(shape, dtype=np.float16)  # pages of rows no shard fills are never touched
    found = np.zeros(len(store), dtype=bool)
    for ids, vectors in cache.iter_shards():
        rows, present = store.lookup(ids, texts=False)
        matrix[rows[present]] = vectors[present]
        found[rows[present]] = True
    missing = needed[~found[needed]]
    if len(missing):
        raise DataError(
            f"{len(missing)} training sentences (e.g. {store.sorted_ids[missing[0]].decode()}) have no teacher "
            f"vector in {cache.directory}: precompute.datasets and precompute.splits must cover train.datasets "
            f"and train.validation_split; run `embedforge precompute`"
        )
    return torch.from_numpy(matrix)
