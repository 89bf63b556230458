"""The training objectives (``train.objective``), each a ``TrainingObjective`` plugin; none loads torch on import."""

from __future__ import annotations

from embedforge.objectives.base import TrainingObjective
from embedforge.objectives.causal_lm import CausalLMObjective
from embedforge.objectives.embedding import EmbeddingObjective

OBJECTIVES: dict[str, TrainingObjective] = {
    objective.name: objective for objective in (EmbeddingObjective(), CausalLMObjective())
}
