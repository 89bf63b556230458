"""What a model family is to the rest of embedforge: one object whose hooks say everything the family changes.

The train stage, the memory planner, the losses and the schema never ask for a family's name: they call
these hooks, and a family that needs nothing special inherits the common behaviour. A family's module
imports only this module, ``config.base`` and pydantic at import time, so the schema can list the families
(and their ``model.<kind>`` sections) without loading torch; everything heavy is imported inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.config import ModelParams
    from embedforge.config.base import Section
    from embedforge.training.data import TrainingData
    from embedforge.training.examples import Examples
    from embedforge.training.hooks import EpochHook
    from embedforge.training.losses import Objective


class Family:
    """A model family: how to build its student and train it. Subclasses set ``kind`` and the hooks they change."""

    kind: ClassVar[str]
    params: ClassVar[type[Section] | None] = None  # its own params section, model.<kind>
    inits: ClassVar[tuple[str, ...]] = ("teacher_layers", "scratch")  # the model.init values it can start from
    init_descriptions: ClassVar[dict[str, str]] = {}  # what each init only this family has does, for messages
    copies_teacher_layers: ClassVar[bool] = True  # model.init: teacher_layers copies model.teacher_layers
    causal_lm: ClassVar[bool] = False  # can train with train.objective: clm (a transformer stack with an LM head)
    projects_to_teacher: ClassVar[bool] = False  # distils through a learned map even at the teacher's width
    smaller: ClassVar[str] = "a smaller model or tokenize.max_length"  # what to shrink when one example won't fit

    def build(
        self, params: ModelParams, tokenizer_dir: Path, max_length: int, teacher_path: Path | None, seed: int
    ) -> SentenceTransformer:
        """A new student from ``model.*`` over the tokenize stage's tokenizer."""
        raise NotImplementedError

    def estimate_memory(self, model: SentenceTransformer, sentences: int, length: int) -> dict[str, int]:
        """One training step's bytes: ``weights``, ``gradients``, ``optimizer``, ``activations`` and ``total``."""
        raise NotImplementedError

    def enable_checkpointing(self, model: SentenceTransformer) -> None:
        """Keep only each layer's (or step's) input for backward, recomputing the rest there; ``estimate_memory``
        then counts what is kept. A family with nothing worth recomputing leaves the model as it is."""

    def model_inputs(self, model: SentenceTransformer) -> Any:
        """``inputs(input_ids, attention_mask) -> features``: what ``model`` takes for a padded batch."""
        from embedforge.models import padded_inputs

        return padded_inputs

    def advise(self, model: SentenceTransformer, examples: int) -> str | None:
        """A warning about training this model on ``examples`` examples, or None."""
        return None

    def extra_losses(self, params: ModelParams) -> dict[str, tuple[float, torch.nn.Module]]:
        """Losses the family adds to the run's objective, by name, each with its weight."""
        return {}

    def start_projection(self, objective: Objective, model: SentenceTransformer, data: TrainingData, seed: int) -> None:
        """Set where the map from the student's space to the teacher's starts, before the first step."""

    def epoch_hook(self, params: ModelParams, data: TrainingData, examples: Examples) -> EpochHook | None:
        """What changes the model between epochs of a phase training on ``examples``; None when nothing does."""
        return None

    def save(self, model: SentenceTransformer, directory: Path) -> SentenceTransformer:
        """Write the finished student to ``directory``; returns the model as it loads from there (what MLflow logs
        and evaluate scores), which differs from ``model`` where the family stores weights in fewer bits."""
        model.save(str(directory))
        return model
