"""What each epoch is judged by: STS Spearman, the objective's validation loss and the seed's "similarity" (the
causal LM objective adds its own figures: ``objectives.causal_lm``).

Every validator reads pre-tokenized sentences (``TokenStore`` rows), never raw text,
and returns plain numbers keyed by name; the trainer logs them as ``val.<name>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from embedforge.config import TrainParams
from embedforge.data.schema import downloaded_split
from embedforge.errors import DataError, UserError
from embedforge.evaluation.sts import cosine_scores, sts_correlation
from embedforge.training.batches import LengthBucketedBatches
from embedforge.training.examples import text_ids
from embedforge.training.hooks import Loop
from embedforge.training.inference import embed_rows, mean_loss
from embedforge.training.token_files import TokenStore

SIMILARITY_SENTENCES = 2000  # validation sentences the epoch's "similarity" is averaged over


class STSValidation:
    """STS Spearman of one raw split, computed from its pre-tokenized sentences."""

    def __init__(self, split: str, store: TokenStore):
        path = self.path_of(split)
        frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "score"])
        if frame.empty:
            raise DataError(f"train.sts_validation: {path} has no rows")
        self.name = split
        self.first = store.rows(list(text_ids(frame["sentence1"])))
        self.second = store.rows(list(text_ids(frame["sentence2"])))
        self.gold = frame["score"].to_numpy(dtype=np.float64)

    @staticmethod
    def path_of(split: str) -> Path:
        """The raw file of ``train.sts_validation``, which must be downloaded."""
        return downloaded_split(split, "train.sts_validation")[1]

    def __call__(self, loop: Loop) -> float | None:
        vectors = embed_rows(loop, np.concatenate([self.first, self.second]))
        half = len(self.first)
        return sts_correlation(cosine_scores(vectors[:half], vectors[half:]), self.gold, self.name).spearman


def similarity(loop: Loop, batches: LengthBucketedBatches) -> float:
    """The seed's headline metric: mean cosine between the model's output and its target on validation sentences.

    The target is the teacher's vector when distilling (through the map into the teacher's
    space, as the loss sees it), else the anchor's positive.
    """
    rows = batches.anchor_rows[:SIMILARITY_SENTENCES]
    outputs = torch.from_numpy(embed_rows(loop, rows)).to(loop.device)
    projection = loop.objective.teacher_projection()
    if loop.teacher_vectors is not None and projection is not None:
        with torch.no_grad():
            outputs = projection(outputs)
        targets = loop.teacher_vectors[torch.from_numpy(rows).to(loop.device)].float()
    else:
        positives = batches.positive_rows[:SIMILARITY_SENTENCES]
        targets = torch.from_numpy(embed_rows(loop, positives)).to(loop.device)
    return float(F.cosine_similarity(outputs, targets, dim=-1).mean())


class Validation:
    """What early stopping can watch: STS Spearman and the objective's loss, plus the "similarity" of outputs
    to targets, on the validation examples."""

    def __init__(self, sts: STSValidation | None, batches: LengthBucketedBatches | None):
        self.sts, self.batches = sts, batches

    def __call__(self, loop: Loop) -> dict[str, float | None]:
        scores: dict[str, float | None] = {}
        if self.sts is not None:
            scores["sts_spearman"] = self.sts(loop)
        if self.batches is not None:
            scores["val_loss"] = mean_loss(loop, self.batches)
            scores["similarity"] = similarity(loop, self.batches)
        return scores


def check_monitor(params: TrainParams, batches: LengthBucketedBatches | None) -> None:
    """Refuse an early-stopping monitor that nothing would measure."""
    monitor = params.early_stopping.monitor
    if monitor == "val_loss" and batches is None:
        raise UserError(
            f"train.early_stopping.monitor is val_loss but no {params.validation_split!r} split of "
            f"{', '.join(params.datasets)} was downloaded (train.validation_split)"
        )
    if monitor == "sts_spearman" and not params.sts_validation:
        raise UserError("train.early_stopping.monitor is sts_spearman but train.sts_validation is null")
