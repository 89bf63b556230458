"""The params of a run: schema, presets, ``--set`` overrides and params.yaml, one module each.

Everything the rest of the package imports is re-exported here, so callers write
``from embedforge.config import Params, load_params`` whichever module holds the name.
"""

from embedforge.config.base import Section
from embedforge.config.data_sections import (
    MIRROR_ENV,
    DownloadParams,
    PrecomputeParams,
    TokenizeParams,
    ValidateParams,
)
from embedforge.config.datasets import (
    NLI_LABELS,
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    DatasetKind,
    DatasetName,
    DatasetSource,
    SplitName,
    documents_split,
    split_reference,
    threshold,
)
from embedforge.config.model import ModelParams
from embedforge.config.overrides import apply_overrides, deep_merge, flatten, parse_override, set_dotted
from embedforge.config.params_file import load_params, read_yaml, write_overrides
from embedforge.config.presets import PRESETS, apply_preset, teacher_shaped
from embedforge.config.results import EvaluateParams, ReportParams, TrackingParams
from embedforge.config.schema import Params, PresetName, max_length_problem
from embedforge.config.train import (
    CausalLMParams,
    EarlyStoppingParams,
    PhaseParams,
    ResumeWarmupParams,
    StagedParams,
    TrainParams,
)

__all__ = [
    "MIRROR_ENV",
    "NLI_LABELS",
    "PRESETS",
    "TRAIN_SPLIT",
    "VALIDATION_SPLIT",
    "CausalLMParams",
    "DatasetKind",
    "DatasetName",
    "DatasetSource",
    "DownloadParams",
    "EarlyStoppingParams",
    "EvaluateParams",
    "ModelParams",
    "Params",
    "PhaseParams",
    "PrecomputeParams",
    "PresetName",
    "ReportParams",
    "ResumeWarmupParams",
    "Section",
    "SplitName",
    "StagedParams",
    "TokenizeParams",
    "TrackingParams",
    "TrainParams",
    "ValidateParams",
    "apply_overrides",
    "apply_preset",
    "deep_merge",
    "documents_split",
    "flatten",
    "load_params",
    "max_length_problem",
    "parse_override",
    "read_yaml",
    "set_dotted",
    "split_reference",
    "teacher_shaped",
    "threshold",
    "write_overrides",
]
