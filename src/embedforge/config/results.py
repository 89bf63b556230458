"""The params of what follows training: evaluate, report, and tracking in MLflow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from embedforge.config.base import Section
from embedforge.config.goals import Goals


class EvaluateParams(Section):
    sts_splits: list[str] = Field(
        default=["stsb/validation", "sick/validation"],
        description="<dataset>/<split> of each STS split scored; [] for a corpus without scored pairs: the verdict "
        "then rests on the agreement with the teacher on held-out training text.",
    )
    separation_splits: list[str] = Field(default=["stsb/validation", "snli/validation"], min_length=1)
    similar_min_score: float = Field(default=4.0, ge=0)
    dissimilar_max_score: float = Field(default=1.0, ge=0)
    similar_min: float = Field(default=0.7, ge=-1, le=1)
    dissimilar_max: float = Field(default=0.5, ge=-1, le=1)
    min_gap: float = Field(default=0.2, ge=0, le=2)
    retrieval_split: str = "snli/validation"
    retrieval_ks: list[Annotated[int, Field(gt=0)]] = Field(default=[1, 10], min_length=1)
    document_retrieval: list[str] = Field(
        default=[],
        description="<queries dataset>/<split> of each document retrieval task: the queries search the split of "
        "their documents dataset (download.datasets.<name>.documents) that documents_split picks.",
    )
    document_pooling: Literal["mean", "max_sim"] = Field(
        default="max_sim",
        description="How a long document's chunks score: max_sim, a query scores a document by its best chunk; mean, "
        "the normalised mean of its chunks' vectors. max_sim is the default: on bench_documents it beat truncation "
        "by 0.076 nDCG@10 where mean beat it by 0.021.",
    )
    speed_sentences: int = Field(default=2000, gt=0)
    speed_rounds: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    map_sentences: int = Field(default=600, ge=10)
    agreement_sentences: int = Field(
        default=1000,
        ge=0,
        le=5000,
        description="Held-out training texts (train.held_out_share) on which the student's nearest neighbours and "
        "pairwise cosines are compared with the teacher's, one unit each; 0: no agreement check. Memory grows with "
        "its square (every pair's cosine, about 1 GB at 5000).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    goals: Goals = Goals()

    @model_validator(mode="after")
    def _scores_ordered(self) -> EvaluateParams:
        if self.dissimilar_max_score >= self.similar_min_score:
            raise ValueError(
                f"evaluate.dissimilar_max_score ({self.dissimilar_max_score}) must be < "
                f"evaluate.similar_min_score ({self.similar_min_score})"
            )
        return self


class ReportParams(Section):
    title: str = Field(default="embedforge report", min_length=1)


class TrackingParams(Section):
    enabled: bool = True
    uri: str | None = None
    experiment: str = Field(default="embedforge", min_length=1)
    timeout_s: float = Field(default=5.0, gt=0)
    registered_model: str | None = Field(default="embedforge-student", min_length=1)
