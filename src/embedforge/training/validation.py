"""What each epoch is judged by: STS Spearman, the objective's validation loss, the seed's "similarity",
and for the causal LM its token accuracy, perplexity and a few generated continuations.

Every validator reads pre-tokenized sentences (``TokenStore`` rows), never raw text,
and returns plain numbers keyed by name; the trainer logs them as ``val.<name>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from embedforge.data.schema import downloaded_split
from embedforge.errors import DataError
from embedforge.evaluation.sts import cosine_scores, sts_correlation
from embedforge.models.causal_lm import LMScore, generate
from embedforge.training.batches import LengthBucketedBatches, TokenStore, text_ids
from embedforge.training.trainer import Trainer

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

    def __call__(self, trainer: Trainer) -> float | None:
        vectors = trainer.embed_rows(np.concatenate([self.first, self.second]))
        half = len(self.first)
        return sts_correlation(cosine_scores(vectors[:half], vectors[half:]), self.gold, self.name).spearman


def similarity(trainer: Trainer, batches: LengthBucketedBatches) -> float:
    """The seed's headline metric: mean cosine between the model's output and its target on validation sentences.

    The target is the teacher's vector when distilling (through the distillation
    projection, as the loss sees it), else the anchor's positive.
    """
    rows = batches.anchor_rows[:SIMILARITY_SENTENCES]
    outputs = torch.from_numpy(trainer.embed_rows(rows)).to(trainer.device)
    if trainer.teacher_vectors is not None and "distill" in trainer.objective.weights:
        with torch.no_grad():
            outputs = trainer.objective.losses["distill"].projection(outputs)
        targets = trainer.teacher_vectors[torch.from_numpy(rows).to(trainer.device)].float()
    else:
        positives = batches.positive_rows[:SIMILARITY_SENTENCES]
        targets = torch.from_numpy(trainer.embed_rows(positives)).to(trainer.device)
    return float(F.cosine_similarity(outputs, targets, dim=-1).mean())


class Validation:
    """What early stopping can watch: STS Spearman and the objective's loss, plus the "similarity" of outputs
    to targets, on the validation examples."""

    def __init__(self, sts: STSValidation | None, batches: LengthBucketedBatches | None):
        self.sts, self.batches = sts, batches

    def __call__(self, trainer: Trainer) -> dict[str, float | None]:
        scores: dict[str, float | None] = {}
        if self.sts is not None:
            scores["sts_spearman"] = self.sts(trainer)
        if self.batches is not None:
            scores["val_loss"] = trainer.mean_loss(self.batches)
            scores["similarity"] = similarity(trainer, self.batches)
        return scores


class LanguageModelValidation:
    """The causal LM's epoch: token-weighted loss (``val_loss``), token accuracy, perplexity = exp(val_loss),
    STS Spearman of its mean-pooled states, and greedy continuations of fixed prompts kept in the history."""

    def __init__(
        self, sts: STSValidation | None, batches: LengthBucketedBatches, prompts: list[str], max_new_tokens: int
    ):
        self.sts, self.batches = sts, batches
        self.prompts, self.max_new_tokens = prompts, max_new_tokens

    @torch.no_grad()
    def __call__(self, trainer: Trainer) -> dict[str, float | None]:
        head = trainer.objective.losses["clm"]
        was_training = trainer.model.training
        trainer.model.eval()
        score = LMScore()
        for batch in self.batches.epoch(0):
            with trainer.autocast():
                features = trainer.features(batch.anchors)
                score.add(head.score(features["token_embeddings"], features["input_ids"], features["attention_mask"]))
        trainer.model.train(was_training)
        epoch = len(trainer.history["epochs"]) + 1
        generations = [
            {
                "epoch": epoch,
                "prompt": prompt,
                "continuation": generate(trainer.model, head.head, prompt, self.max_new_tokens),
            }
            for prompt in self.prompts
        ]
        trainer.history.setdefault("generations", []).extend(generations)
        trainer.log_text(
            "\n".join(f"{row['prompt']} -> {row['continuation']}" for row in generations) + "\n",
            f"generations/epoch_{epoch:03d}.txt",
        )
        scores: dict[str, float | None] = {"sts_spearman": self.sts(trainer)} if self.sts is not None else {}
        scores.update({"val_loss": score.loss, "token_accuracy": score.token_accuracy, "perplexity": score.perplexity})
        return scores
