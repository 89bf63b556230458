"""The params of the student model: its family and shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from embedforge.config.base import Section

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
