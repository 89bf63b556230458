"""The ``lattice`` family: pooled token embeddings driving a 3D cellular network (``models.lattice``)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from embedforge.config.base import Section
from embedforge.families.base import Family

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


class LatticeFamily(Family):
    kind = "lattice"
    params = LatticeParams
    copies_teacher_layers: ClassVar[bool] = False  # it has no layers: teacher_layers copies the token embeddings

    def build(self, params, tokenizer_dir, max_length, teacher_path, seed):
        from embedforge.models.lattice import build_student

        return build_student(params, tokenizer_dir, max_length, teacher_path, seed)

    def estimate_memory(self, model, sentences, length):
        from embedforge.models.lattice import estimate_lattice_memory

        return estimate_lattice_memory(model, sentences, length)

    def enable_checkpointing(self, model):
        from embedforge.models.lattice import enable_checkpointing

        enable_checkpointing(model)

    def advise(self, model, examples):
        from embedforge.models.lattice import advice

        return advice(model, examples)
