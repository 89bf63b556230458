"""The schema of params.yaml: one section per stage, each knob once, with its bounds.

Every check on a single value or between values lives here, so a bad value fails
before any work starts; the message names the dotted key (see ``errors``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from embedforge.config.base import Section
from embedforge.config.builtin_datasets import BUILTINS, with_builtin_defaults
from embedforge.config.datasets import (
    RESERVED_NAMES,
    DatasetName,
    DatasetSource,
    SplitName,
    check_dataset_uses,
    default_datasets,
)

ONE_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
CUDA_DEVICE = re.compile(r"cuda:\d+")
PresetName = Literal["development", "research", "production", "distill-small"]

# Named here because the download section's own message points at it; ``params_file`` reads it.
MIRROR_ENV = "EMBEDFORGE_MIRROR"


class DownloadParams(Section):
    source: Literal["hub", "mirror", "archive"] = "hub"
    mirror: str | None = None
    limit: int | None = Field(default=None, gt=0)
    optional_splits: list[SplitName] = ["test"]
    drop_eval_overlap_from_train: bool = True
    hub_timeout_s: float = Field(default=10.0, gt=0)
    datasets: dict[DatasetName, DatasetSource] = Field(default_factory=default_datasets, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _builtins_filled_in(cls, data: Any) -> Any:
        """snli, stsb and sick need no kind (or score range) in params.yaml: they are known."""
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            data = {
                **data,
                "datasets": {
                    name: with_builtin_defaults(name, given) if isinstance(given, dict) else given
                    for name, given in data["datasets"].items()
                },
            }
        return data

    @model_validator(mode="after")
    def _source_has_location(self) -> DownloadParams:
        if self.source == "mirror" and not self.mirror:
            raise ValueError(
                f"download.source is 'mirror' but download.mirror is empty: set download.mirror "
                f"or the {MIRROR_ENV} environment variable"
            )
        if reserved := sorted(set(self.datasets) & RESERVED_NAMES):
            raise ValueError(f"download.datasets.{reserved[0]}: the name is taken by a pipeline folder; pick another")
        foreign = [name for name, ds in self.datasets.items() if ds.archive and name not in BUILTINS]
        if foreign:
            raise ValueError(
                f"download.datasets.{foreign[0]}.archive: archives are read for {', '.join(BUILTINS)} only; "
                f"give your own data as files"
            )
        if self.source == "archive":
            hub_only = [name for name, ds in self.datasets.items() if ds.hub_id and name not in BUILTINS]
            if hub_only:
                raise ValueError(
                    f"download.datasets.{hub_only[0]}: download.source 'archive' reads the official archives of "
                    f"{', '.join(BUILTINS)}; give {hub_only[0]} as files, or use download.source hub or mirror"
                )
            missing = [name for name, ds in self.datasets.items() if ds.hub_id and not ds.archive]
            if missing:
                raise ValueError(
                    "download.source is 'archive' but no archive is set for "
                    + ", ".join(f"download.datasets.{name}.archive" for name in missing)
                )
        return self


class ValidateParams(Section):
    min_chars: int = Field(default=1, ge=1)
    max_chars: int = Field(default=1000, gt=0)
    max_duplicate_pair_rate: float = Field(default=0.02, ge=0, le=1)
    max_leaked_pair_rate: float = Field(default=0.0, ge=0, le=1)
    failed_rows_shown: int = Field(default=3, ge=1)
    data_docs: bool = True
    batch_rows: int = Field(default=100_000, ge=1)
    allow_empty_splits: bool = False

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"validate.min_chars ({self.min_chars}) must be <= validate.max_chars ({self.max_chars})")
        return self


class PrecomputeParams(Section):
    teacher: str = Field(default="packaged:all-MiniLM-L6-v2", min_length=1)
    datasets: list[DatasetName] = Field(default=["snli", "stsb", "sick"], min_length=1)
    splits: list[SplitName] = Field(default=["train", "validation"], min_length=1)
    batch_size: int = Field(default=128, gt=0)
    shard_size: int = Field(default=50_000, gt=0)
    dtype: Literal["float16", "float32"] = "float16"
    normalize: bool = True
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    workers: int = Field(default=1, ge=1)
    dask_address: str | None = Field(default=None, min_length=1)

    @property
    def devices(self) -> list[str]:
        """``device`` as a list: one item, or the GPUs of a multi-GPU run, one worker each."""
        return [item.strip() for item in self.device.split(",")]

    @model_validator(mode="after")
    def _devices_fit_workers(self) -> PrecomputeParams:
        devices = self.devices
        if len(devices) == 1:
            if not ONE_DEVICE.fullmatch(devices[0]):
                raise ValueError(
                    f"precompute.device: must be auto, cpu, mps, cuda, cuda:N or a list of GPUs like cuda:0,cuda:1, "
                    f"got {self.device!r}"
                )
            return self
        if not all(CUDA_DEVICE.fullmatch(device) for device in devices) or len(set(devices)) < len(devices):
            raise ValueError(
                f"precompute.device: several devices must be distinct GPUs, each cuda:N (e.g. cuda:0,cuda:1), "
                f"got {self.device!r}"
            )
        if self.workers != len(devices):
            raise ValueError(
                f"precompute.workers ({self.workers}) must equal the number of GPUs in precompute.device "
                f"({len(devices)}: {self.device}): one worker per GPU"
            )
        if self.dask_address is not None:
            raise ValueError(
                "precompute.device: a list of GPUs pins the workers of the LocalCluster precompute starts; with "
                "precompute.dask_address, start each `dask worker` on its own GPU (CUDA_VISIBLE_DEVICES=N) "
                "and set precompute.device: cuda"
            )
        return self


class TokenizeParams(Section):
    tokenizer: str = Field(default="teacher", min_length=1)
    train_vocab: Literal["wordpiece", "bpe"] | None = None
    vocab_size: int = Field(default=30522, ge=100)
    max_length: int = Field(default=128, ge=8)
    chunk_overlap: int = Field(default=0, ge=0)
    datasets: list[DatasetName] = Field(default=["snli", "stsb", "sick"], min_length=1)
    splits: list[SplitName] = Field(default=["train", "validation"], min_length=1)

    @model_validator(mode="after")
    def _overlap_fits(self) -> TokenizeParams:
        if self.chunk_overlap >= self.max_length - 2:
            raise ValueError(
                f"tokenize.chunk_overlap ({self.chunk_overlap}) must be < "
                f"tokenize.max_length - 2 ({self.max_length - 2})"
            )
        return self


LatticeMode = Literal["development", "research", "production"]


class LatticeParams(Section):
    """The 3D cellular network: its cells, the width of each cell's state, and how many update steps run."""

    mode: LatticeMode | None = "development"
    size: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=3, max_length=3)
    channels: int = Field(default=8, gt=0)
    steps: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_shape(self) -> LatticeParams:
        if (self.mode is None) == (self.size is None):
            raise ValueError(
                "model.lattice: give exactly one of model.lattice.mode and model.lattice.size "
                f"(got mode {self.mode!r} and size {self.size!r}); set the other to null"
            )
        return self


class DynamicParams(Section):
    """Embedding dimensions that grow while saturated and shrink where unused (the NAOMI-II seed)."""

    embedding_dim: int = Field(default=128, gt=0)
    expand_by: int = Field(default=64, gt=0)
    expand_interval: int = Field(default=1, gt=0)
    max_dims: int = Field(default=384, gt=0)
    saturation: float = Field(default=0.3, gt=0, le=1)
    active_rate: float = Field(default=0.05, gt=0, le=1)
    prune: bool = True
    shrink: float = Field(default=0.01, ge=0)
    sparsity_weight: float = Field(default=0.1, ge=0)
    sparsity_target: list[Annotated[float, Field(ge=0, le=1)]] = Field(default=[0.4, 0.7], min_length=2, max_length=2)
    min_batch_size: int = Field(default=16, ge=2)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> DynamicParams:
        if self.embedding_dim > self.max_dims:
            raise ValueError(
                f"model.dynamic.embedding_dim ({self.embedding_dim}) must be <= "
                f"model.dynamic.max_dims ({self.max_dims})"
            )
        low, high = self.sparsity_target
        if low > high:
            raise ValueError(
                f"model.dynamic.sparsity_target ({self.sparsity_target}) must be [low, high] with low <= high"
            )
        return self


class StaticParams(Section):
    """The static family: a token-vector table of ``dim`` columns, optionally mapped to ``projection_dim``."""

    dim: int = Field(default=256, gt=0)
    projection_dim: int | None = Field(default=None, gt=0)
    sif_coefficient: float | None = Field(default=1e-4, gt=0)


class ModelParams(Section):
    kind: Literal["encoder", "lattice", "dynamic", "static"] = "encoder"
    hidden_size: int = Field(default=384, gt=0)
    num_layers: int = Field(default=6, gt=0)
    num_heads: int = Field(default=12, gt=0)
    intermediate_size: int = Field(default=1536, gt=0)
    max_positions: int = Field(default=512, ge=8)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    attention: Literal["sdpa", "eager"] = Field(
        default="sdpa",
        description="The attention kernel: torch's scaled_dot_product_attention, or the plain matmul-softmax one.",
    )
    init: Literal["scratch", "teacher_layers", "teacher_tokens"] = "teacher_layers"
    teacher_layers: list[Annotated[int, Field(ge=0)]] = [0, 1, 2, 3, 4, 5]
    lattice: LatticeParams = LatticeParams()
    dynamic: DynamicParams = DynamicParams()
    static: StaticParams = StaticParams()

    @model_validator(mode="after")
    def _init_fits_kind(self) -> ModelParams:
        """teacher_tokens makes a token table, which only the static family has; the static family has no
        layers to copy."""
        if (self.kind == "static") != (self.init == "teacher_tokens") and self.init != "scratch":
            raise ValueError(
                "model.init: a static student starts from teacher_tokens or scratch"
                if self.kind == "static"
                else f"model.init: teacher_tokens builds a static student's table (model.kind: static), "
                f"not the {self.kind} family; use teacher_layers or scratch"
            )
        return self

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelParams:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )
        return self

    @model_validator(mode="after")
    def _one_teacher_layer_per_layer(self) -> ModelParams:
        """With ``init: teacher_layers`` student layer i starts as teacher layer ``teacher_layers[i]``.

        The lattice has no layers: it copies only the teacher's token embeddings.
        """
        if self.init != "teacher_layers" or self.kind == "lattice":
            return self
        if len(self.teacher_layers) != self.num_layers:
            raise ValueError(
                f"model.teacher_layers ({self.teacher_layers}) must name one teacher layer per student layer: "
                f"{len(self.teacher_layers)} given but model.num_layers is {self.num_layers}"
            )
        if len(set(self.teacher_layers)) != len(self.teacher_layers):
            raise ValueError(f"model.teacher_layers ({self.teacher_layers}) must not repeat a layer")
        return self


class EarlyStoppingParams(Section):
    monitor: Literal["sts_spearman", "val_loss"] = "sts_spearman"
    patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.001, ge=0)


class ResumeWarmupParams(Section):
    """After a resume, the learning rate ramps from ``start`` x to 1 x over ``epochs`` epochs."""

    enabled: bool = True
    epochs: float = Field(default=3.0, gt=0)
    start: float = Field(default=0.2, gt=0, le=1)


class CausalLMParams(Section):
    """What the causal LM objective shows each epoch: greedy continuations of these prompts."""

    prompts: list[str] = Field(default=["A man is", "Two dogs", "The woman is"], min_length=1)
    max_new_tokens: int = Field(default=16, gt=0)


class PhaseParams(Section):
    """One phase of staged training: a share of the training examples, for some epochs."""

    data_fraction: float = Field(gt=0, le=1)
    epochs: int = Field(gt=0)
    balanced: bool = False  # the same number of examples from every dataset of train.datasets


class StagedParams(Section):
    """Foundation (small data, many epochs) -> consolidation (medium, balanced) -> mastery (all data, few epochs)."""

    foundation: PhaseParams = PhaseParams(data_fraction=0.1, epochs=4)
    consolidation: PhaseParams = PhaseParams(data_fraction=0.5, epochs=2, balanced=True)
    mastery: PhaseParams = PhaseParams(data_fraction=1.0, epochs=1)


class TrainParams(Section):
    objective: Literal["embedding", "clm"] = "embedding"
    schedule: Literal["single", "staged"] = "single"
    staged: StagedParams = StagedParams()
    clm: CausalLMParams = CausalLMParams()
    epochs: int = Field(default=3, gt=0)
    max_steps: int | None = Field(
        default=None,
        gt=0,
        description="Optimizer steps per phase: in a staged schedule each phase gets its own train.max_steps, "
        "while train.max_minutes spans all phases. null: no step limit.",
    )
    max_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Minutes spanning all phases: the phases of a staged schedule share one train.max_minutes (a phase "
        "that would start after it ran out does not run), while train.max_steps counts per phase. null: no time limit.",
    )
    batch_size: int = Field(default=64, ge=2)
    grad_accum_steps: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    lr_floor: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    objectives: dict[Literal["infonce", "distill"], Annotated[float, Field(ge=0)]] = {"infonce": 1.0, "distill": 0.0}
    temperature: float = Field(default=0.05, gt=0)
    distill_loss: Literal["mse", "cosine"] = "mse"
    hard_negatives: bool = True
    datasets: list[DatasetName] = Field(default=["snli", "stsb"], min_length=1)
    stsb_min_score: float = Field(default=4.0, ge=0, le=5)
    validation_split: SplitName = "validation"
    sts_validation: str | None = "stsb/validation"
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    resume: bool = False
    resume_from: Literal["last", "best"] = "last"
    resume_warmup: ResumeWarmupParams = ResumeWarmupParams()
    checkpoint_every_steps: int = Field(default=200, gt=0)
    log_every_steps: int = Field(default=10, gt=0)
    bucket_batches: int = Field(default=50, ge=1)
    loader_workers: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    memory_limit_mb: float | None = Field(default=None, gt=0)
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute each layer's activations in the backward pass instead of keeping them: less memory "
        "per example (larger micro-batches), more compute.",
    )
    nproc_per_node: int = Field(default=1, ge=1, description="Training processes on this machine (one per GPU).")
    nnodes: int = Field(default=1, ge=1, description="Machines training together; each runs `embedforge train`.")
    rdzv_endpoint: str | None = Field(
        default=None,
        pattern=r"^[^:\s]+:\d+$",
        description="host:port where the machines of a multi-node world meet (torchrun's --rdzv-endpoint); null on "
        "one machine: a free local port.",
    )
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    max_restarts: int = Field(default=0, ge=0, description="Times torch elastic restarts a failed world, resuming.")

    @model_validator(mode="after")
    def _world_meets(self) -> TrainParams:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f"train.nnodes is {self.nnodes}: set train.rdzv_endpoint to host:port of the machine the nodes meet at"
            )
        return self

    @model_validator(mode="after")
    def _some_objective(self) -> TrainParams:
        if not any(weight > 0 for weight in self.objectives.values()):
            raise ValueError(f"train.objectives ({self.objectives}) must give at least one objective a weight > 0")
        if self.grad_accum_steps > self.batch_size:
            raise ValueError(
                f"train.grad_accum_steps ({self.grad_accum_steps}) must be <= train.batch_size ({self.batch_size}): "
                f"each micro-batch needs an example"
            )
        return self

    @property
    def uses_pairs(self) -> bool:
        """InfoNCE trains on pairs; distillation alone, and the causal LM, train on every distinct sentence."""
        return self.objective == "embedding" and self.objectives.get("infonce", 0) > 0

    @property
    def distills(self) -> bool:
        return self.objective == "embedding" and self.objectives.get("distill", 0) > 0


class EvaluateParams(Section):
    sts_splits: list[str] = Field(default=["stsb/validation", "sick/validation"], min_length=1)
    separation_splits: list[str] = Field(default=["stsb/validation", "snli/validation"], min_length=1)
    similar_min_score: float = Field(default=4.0, ge=0)
    dissimilar_max_score: float = Field(default=1.0, ge=0)
    similar_min: float = Field(default=0.7, ge=-1, le=1)
    dissimilar_max: float = Field(default=0.5, ge=-1, le=1)
    min_gap: float = Field(default=0.2, ge=0, le=2)
    retrieval_split: str = "snli/validation"
    retrieval_ks: list[Annotated[int, Field(gt=0)]] = Field(default=[1, 10], min_length=1)
    speed_sentences: int = Field(default=2000, gt=0)
    speed_rounds: int = Field(default=3, gt=0)
    batch_size: int = Field(default=64, gt=0)
    map_sentences: int = Field(default=600, ge=10)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

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
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    @model_validator(mode="after")
    def _objective_fits_the_model(self) -> Params:
        if self.train.objective == "clm" and self.model.kind != "encoder":
            raise ValueError(
                f"train.objective: clm trains a transformer stack with a causal mask and an LM head, "
                f"so it needs model.kind: encoder, got {self.model.kind!r}"
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
