"""The ``static`` family: a token-vector table averaged over a sentence (``models.static``), no layers.

Its table starts in the PCA axes of the teacher's token vectors (``model.init: teacher_tokens``) or at random,
so it always reads the teacher's space through a learned map, and that map starts at the least-squares fit of
the untrained student onto the teacher (``start_projection``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from embedforge.config.base import Section
from embedforge.families.base import Family

PROJECTION_FIT_ROWS = 20_000  # sentences the distill projection is fitted on before training


class StaticParams(Section):
    """The static family: a token-vector table of ``dim`` columns, optionally mapped to ``projection_dim``."""

    dim: int = Field(default=256, gt=0)
    projection_dim: int | None = Field(default=None, gt=0)
    sif_coefficient: float | None = Field(default=1e-4, gt=0)


class StaticFamily(Family):
    kind = "static"
    params = StaticParams
    inits: ClassVar[tuple[str, ...]] = ("teacher_tokens", "scratch")
    init_descriptions: ClassVar[dict[str, str]] = {"teacher_tokens": "builds a static student's table"}
    copies_teacher_layers: ClassVar[bool] = False
    projects_to_teacher: ClassVar[bool] = True
    smaller: ClassVar[str] = (
        "a smaller model.static.dim (the token table is vocabulary x dim, with its gradient and AdamW's two moments)"
    )

    def build(self, params, tokenizer_dir, max_length, teacher_path, seed):
        from embedforge.models.static import build_student

        return build_student(params, tokenizer_dir, max_length, teacher_path, seed)

    def estimate_memory(self, model, sentences, length):
        from embedforge.models.static import estimate_static_memory

        return estimate_static_memory(model, sentences, length)

    def model_inputs(self, model):
        from embedforge.models.static import bag_inputs

        return bag_inputs(model)

    def save(self, model, directory):
        from embedforge.models.static import save_student

        return save_student(model, directory)

    def start_projection(self, objective, model, data, seed):
        """Start the distill projection at the least-squares map from the untrained student's vectors onto the
        teacher's, over a seeded sample of the training sentences. From a random map, the first steps would bend
        every row they touch towards that map, away from the rows they do not touch; from the fitted one, they
        refine."""
        import numpy as np
        import torch

        projection = objective.teacher_projection()
        if projection is None:
            return
        rows = np.unique(data.all_batches.anchor_rows)
        rows = np.random.default_rng(seed).permutation(rows)[:PROJECTION_FIT_ROWS]
        inputs = self.model_inputs(model)
        with torch.no_grad():
            vectors = torch.cat(
                [
                    model(inputs(*data.store.padded(chunk, data.pad_id)))["sentence_embedding"]
                    for chunk in np.array_split(rows, max(1, len(rows) // 4096))
                ]
            )
            student = torch.cat([vectors, torch.ones(len(rows), 1)], dim=1).double()
            teacher = data.teacher_vectors[torch.from_numpy(rows)].double().cpu()
            solution = torch.linalg.lstsq(student, teacher).solution
            projection.weight.copy_(solution[:-1].T)
            projection.bias.copy_(solution[-1])
