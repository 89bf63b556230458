"""The schema of params.yaml: ``Params``, one section per stage, each knob once, with its bounds.

Each section lives with its owner (``data_sections``, ``model``, ``train``, ``results``) and checks its own
values; the checks between sections live here. A bad value fails before any work starts, and the message
names the dotted key (see ``errors``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from embedforge.config.base import Section
from embedforge.config.data_sections import DownloadParams, PrecomputeParams, TokenizeParams, ValidateParams
from embedforge.config.datasets import check_dataset_uses
from embedforge.config.export import ExportParams
from embedforge.config.model import ModelParams, families
from embedforge.config.results import EvaluateParams, ReportParams, TrackingParams
from embedforge.config.train import TrainParams

PresetName = Literal["development", "research", "production", "distill-small"]


def max_length_problem(max_length: int, max_positions: int) -> str | None:
    """Why chunks of ``max_length`` tokens do not fit a student of ``max_positions``, or None if they do.

    Params check it before any stage runs; the model families check it again because they can
    be built without params (tests, benchmarks), so the rule and its message live here once.
    """
    if max_length <= max_positions:
        return None
    return (
        f"tokenize.max_length ({max_length}) must be <= model.max_positions ({max_positions}): "
        f"the student has no position embedding beyond it"
    )


class Params(Section):
    preset: PresetName = "development"
    seed: int = 42
    download: DownloadParams = DownloadParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    precompute: PrecomputeParams = PrecomputeParams()
    tokenize: TokenizeParams = TokenizeParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @model_validator(mode="after")
    def _objective_fits_the_model(self) -> Params:
        causal = [kind for kind, family in families().items() if family.causal_lm]
        if self.train.objective == "clm" and self.model.kind not in causal:
            raise ValueError(
                f"train.objective: clm trains a transformer stack with a causal mask and an LM head, "
                f"so it needs model.kind: {' or '.join(causal)}, got {self.model.kind!r}"
            )
        return self

    @model_validator(mode="after")
    def _datasets_serve_their_stages(self) -> Params:
        check_dataset_uses(self)
        return self

    @model_validator(mode="after")
    def _max_length_fits_the_model(self) -> Params:
        if problem := max_length_problem(self.tokenize.max_length, self.model.max_positions):
            raise ValueError(problem)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved params as params.yaml would spell them."""
        return self.model_dump(mode="json", by_alias=True)
