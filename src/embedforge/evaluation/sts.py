"""STS: how well cosine similarity of sentence vectors ranks pairs like human similarity scores.

Spearman (rank) is the headline number, Pearson the linear one, both from scipy.
A split with no rows is an error rather than a NaN in the metrics; constant
predictions make a correlation undefined, which is reported as None with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from embedforge.data.schema import downloaded_split
from embedforge.errors import DataError

log = logging.getLogger(__name__)

# float32 cosines of identical vectors differ in their last bits; a spread this small is no ranking
CONSTANT_SPREAD = 1e-6


@dataclass(frozen=True)
class STSResult:
    spearman: float | None
    pearson: float | None
    pairs: int
    warning: str | None = None


def read_split(spec: str, key: str) -> pd.DataFrame:
    """A raw split named ``<dataset>/<split>``; missing or empty is an error naming the param."""
    dataset, path = downloaded_split(spec, key)
    frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "label", "score", "genre"])
    if frame.empty:
        raise DataError(f"{key}: {path} has no rows, so it cannot be evaluated")
    return frame.assign(dataset=dataset)


def cosine_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; a zero vector scores 0 instead of NaN."""
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return np.divide((first * second).sum(axis=1), norms, out=np.zeros(len(first)), where=norms > 0)


def sts_correlation(predicted: np.ndarray, gold: np.ndarray, name: str = "sts") -> STSResult:
    """Spearman and Pearson of ``predicted`` against ``gold``, None where undefined."""
    if len(predicted) == 0:
        raise DataError(f"{name}: the split has no rows, so no correlation can be computed")
    if np.ptp(predicted) <= CONSTANT_SPREAD or np.ptp(gold) == 0:
        which = "predictions" if np.ptp(predicted) <= CONSTANT_SPREAD else "gold scores"
        warning = f"{name}: all {which} are equal, so the correlation is undefined"
        log.warning(warning)
        return STSResult(None, None, len(predicted), warning)
    return STSResult(
        float(stats.spearmanr(predicted, gold).statistic), float(stats.pearsonr(predicted, gold).statistic), len(gold)
    )


class STSEvaluator:
    """Score a model on one raw STS split (sentence1, sentence2, score), e.g. data/raw/stsb/validation.parquet."""

    def __init__(self, path: Path, batch_size: int = 128):
        if not path.is_file():
            raise DataError(f"{path}: STS split not found: run `embedforge download` (any split name works)")
        frame = pd.read_parquet(path, columns=["sentence1", "sentence2", "score"])
        self.name = f"{path.parent.name}/{path.stem}"
        self.first, self.second = list(frame["sentence1"]), list(frame["sentence2"])
        self.gold = frame["score"].to_numpy(dtype=np.float64)
        self.batch_size = batch_size

    def __call__(self, model: Any) -> STSResult:
        """``model`` is anything with SentenceTransformer's ``encode``."""
        if not self.first:
            raise DataError(f"{self.name}: the split has no rows, so no correlation can be computed")
        vectors = model.encode(self.first + self.second, batch_size=self.batch_size, convert_to_numpy=True)
        half = len(self.first)
        return sts_correlation(cosine_scores(vectors[:half], vectors[half:]), self.gold, self.name)
