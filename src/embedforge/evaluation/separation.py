"""Separation: similar pairs should score high, dissimilar pairs low, with a clear gap between them.

A pair is similar when its STS score is at least ``similar_min_score`` (4 of 5) or,
without a score, when it is an NLI entailment; dissimilar when its score is at most
``dissimilar_max_score`` (1) or, without a score, an NLI contradiction. The verdict
compares the mean cosines with ``evaluate.similar_min``, ``dissimilar_max`` and ``min_gap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedforge.errors import DataError

SIMILAR, DISSIMILAR = "similar", "dissimilar"


@dataclass(frozen=True)
class SeparationResult:
    similar_mean: float
    dissimilar_mean: float
    similar_pairs: int
    dissimilar_pairs: int
    passed: bool

    @property
    def gap(self) -> float:
        return self.similar_mean - self.dissimilar_mean


def pair_kinds(frame: pd.DataFrame, similar_min_score: float, dissimilar_max_score: float) -> pd.Series:
    """``similar``, ``dissimilar`` or None for every row of a raw split (columns ``score`` and ``label``)."""
    score = frame["score"].astype("float64")
    by_score = np.where(score >= similar_min_score, SIMILAR, np.where(score <= dissimilar_max_score, DISSIMILAR, None))
    by_label = frame["label"].map({"entailment": SIMILAR, "contradiction": DISSIMILAR})
    kinds = np.where(score.notna(), by_score, by_label.astype(object).where(by_label.notna(), None))
    return pd.Series(kinds, index=frame.index, dtype=object)


def separation(
    similar: np.ndarray, dissimilar: np.ndarray, similar_min: float, dissimilar_max: float, min_gap: float
) -> SeparationResult:
    """Mean cosine of each group and the verdict; a group with no pairs is a data error, not a NaN."""
    for name, values in ((SIMILAR, similar), (DISSIMILAR, dissimilar)):
        if len(values) == 0:
            raise DataError(f"separation: no {name} pairs in the evaluated splits (evaluate.separation_splits)")
    similar_mean, dissimilar_mean = float(np.mean(similar)), float(np.mean(dissimilar))
    passed = (
        similar_mean > similar_min and dissimilar_mean < dissimilar_max and similar_mean - dissimilar_mean > min_gap
    )
    return SeparationResult(similar_mean, dissimilar_mean, len(similar), len(dissimilar), passed)
