"""The ``dynamic`` family: the encoder with a sparse head whose embedding grows while saturated and shrinks where
unused (the NAOMI-II seed). What it changes in training (a sparsity loss, dimension growth between epochs, a
projection that follows the head) lives in ``families.dynamic_growth``, loaded when training starts."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from embedforge.config.base import Section
from embedforge.families.base import Family


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


class DynamicFamily(Family):
    kind = "dynamic"
    params = DynamicParams
    projects_to_teacher: ClassVar[bool] = True  # its width changes: the teacher's space is read through a map

    def build(self, params, tokenizer_dir, max_length, teacher_path, seed):
        from embedforge.models.dynamic import build_student

        return build_student(params, tokenizer_dir, max_length, teacher_path, seed)

    def estimate_memory(self, model, sentences, length):
        from embedforge.models.dynamic import estimate_dynamic_memory

        return estimate_dynamic_memory(model, sentences, length)

    def enable_checkpointing(self, model):
        from embedforge.models.dynamic import enable_checkpointing

        enable_checkpointing(model)

    def extra_losses(self, params):
        from embedforge.families.dynamic_growth import SparsityLoss

        return {"sparsity": (params.dynamic.sparsity_weight, SparsityLoss())}

    def epoch_hook(self, params, data, examples):
        from embedforge.families.dynamic_growth import DimensionGrowth

        sample = data.validation_batches if data.validation_batches is not None else data.all_batches
        return DimensionGrowth(
            params.dynamic, sample.anchor_rows, data.batch_size, lambda size: data.batches_of(examples, size)
        )
