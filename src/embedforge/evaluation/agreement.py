"""Teacher agreement: how closely the student reproduces its teacher on training text it never saw (the slice
``train.held_out_share`` keeps out), the one measure a corpus without scored pairs allows.

Two figures: the share of each unit's nearest neighbours the two models have in common (what search sees), and the
Spearman correlation of every pair's cosine under both (the whole geometry, ranks only, so a student whose
cosines are uniformly higher or lower than the teacher's is not penalised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedforge.data.chunks import Chunker
from embedforge.data.held_out import held_out, seeded_keys
from embedforge.data.sentences import ID_DTYPE, READ_BATCH_ROWS, iter_sentences, sentence_id, text_batches
from embedforge.evaluation.sts import sts_correlation

NEIGHBOURS = 10


def not_measured(units: int, reason: str, k: int = NEIGHBOURS) -> dict[str, Any]:
    """The agreement block when there is nothing to compare: the count, None figures and why."""
    return {"units": units, f"knn@{k}_overlap": None, "pairwise_spearman": None, "reason": reason}


def teacher_agreement(student: np.ndarray, teacher: np.ndarray, k: int = NEIGHBOURS) -> dict[str, Any]:
    """Over the rows of ``student`` and ``teacher`` (the same units' vectors): the mean share of each unit's ``k``
    nearest neighbours by cosine (itself excluded) the two share, and the Spearman correlation of the cosines of
    every pair. A unit needs ``k`` others, so fewer than ``k + 1`` units measure nothing."""
    units = len(student)
    if units <= k:
        return not_measured(units, f"{units} held-out units: {k} nearest neighbours need at least {k + 1}", k)
    student_cosines, teacher_cosines = cosine_matrix(student), cosine_matrix(teacher)
    shared = nearest(student_cosines, k)[:, :, None] == nearest(teacher_cosines, k)[:, None, :]
    upper = np.triu_indices(units, 1)
    correlation = sts_correlation(student_cosines[upper], teacher_cosines[upper], "teacher agreement")
    return {
        "units": units,
        f"knn@{k}_overlap": float(shared.sum(axis=(1, 2)).mean() / k),
        "pairwise_spearman": correlation.spearman,
        "reason": correlation.warning,
    }


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows; a zero row has cosine 0 with everything."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit @ unit.T


def nearest(cosines: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most similar other rows of each row, in no particular order."""
    others = cosines.copy()
    np.fill_diagonal(others, -np.inf)
    return np.argpartition(-others, k - 1, axis=1)[:, :k]


def held_out_units(files: list[Path], chunker: Chunker, share: float, seed: int, limit: int) -> list[str]:
    """``limit`` held-out texts of ``files`` (as training reads them), one unit each: a seeded sample, streamed
    with memory for ``limit`` texts and the held-out texts of one read batch.

    The sample is the held-out texts first in the slice's own seeded order, so it does not depend on the files'
    order. A long text gives one of its chunks, picked by the same order, so that a document's chunks do not fill
    each other's neighbour lists.
    """
    keys, texts = np.zeros(0, np.uint64), []
    for batch in text_batches(iter_sentences(files), READ_BATCH_ROWS):
        ids = np.array([sentence_id(text) for text in batch], dtype=ID_DTYPE)
        chosen = np.flatnonzero(held_out(ids, share, seed))
        keys = np.concatenate([keys, seeded_keys(ids[chosen], seed)])
        texts += [batch[index] for index in chosen]
        first = np.unique(keys, return_index=True)[1][:limit]  # distinct texts, in key order
        keys, texts = keys[first], [texts[index] for index in first]
    return [chunked.units[int(np.argmin(seeded_keys(chunked.unit_ids(), seed)))] for chunked in chunker.split(texts)]
