"""What a run's student must reach, relative to its teacher: the verdict the report, the flow and eval.json lead
with. Relative, because a teacher that misses an absolute target shows the target is the data's, not the
student's."""

from __future__ import annotations

from pydantic import Field

from embedforge.config.base import Section


class Goals(Section):
    min_sts_kept: float = Field(
        default=0.95,
        gt=0,
        description="The share of the teacher's STS Spearman the student keeps, on every STS split it is scored on.",
    )
    min_speed_ratio: float = Field(
        default=2.0,
        gt=0,
        description="The student encodes at least this many times the teacher's sentences per second.",
    )
    max_size_ratio: float | None = Field(
        default=None, gt=0, description="At most this share of the teacher's parameters; null: any size."
    )
    min_agreement_spearman: float = Field(
        default=0.9,
        ge=-1,
        le=1,
        description="Without an STS split, the Spearman correlation of the student's and the teacher's pairwise "
        "cosines on the held-out slice of the training corpus must reach this.",
    )
