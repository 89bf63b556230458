"""The params of training: schedule, objectives, optimiser, resuming and the training world."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from embedforge.config.base import Section
from embedforge.config.datasets import DatasetName, SplitName


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
    max_chunks_per_text: int | None = Field(
        default=None,
        ge=1,
        description="Chunks of a text longer than tokenize.max_length that train, from its first; null: every "
        "chunk, 1: the first chunk only.",
    )
    datasets: list[DatasetName] = Field(default=["snli", "stsb"], min_length=1)
    held_out_share: float = Field(
        default=0.02,
        ge=0,
        le=0.5,
        description="Share of the texts of train.datasets' train splits kept out of training (chosen by their ids and "
        "seed, a long text with all its chunks), on which evaluate measures how closely the student reproduces the "
        "teacher (evaluate.agreement_sentences); 0: none.",
    )
    similar_min_score: float = Field(default=4.0, ge=0, le=5)
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

    @property
    def generates_text(self) -> bool:
        """The causal LM writes greedy continuations of ``train.clm.prompts`` every epoch."""
        return self.objective == "clm"
