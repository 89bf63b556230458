"""What a training objective (``train.objective``) is to the train stage: one object whose hooks say how it changes
the student, which losses it trains with, how an epoch is judged and what it adds to a step's memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from embedforge.config import Params
    from embedforge.families.base import Family
    from embedforge.training.batches import LengthBucketedBatches
    from embedforge.training.losses import Objective
    from embedforge.training.validation import STSValidation


class TrainingObjective:
    """A way to train a student. Subclasses set ``name`` and the hooks they change."""

    name: ClassVar[str]

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The student as this objective trains it (built before the optimizer, which must see its parameters)."""
        return model

    def losses(self, cfg: Params, model: torch.nn.Module, teacher_dim: int | None, family: Family) -> Objective:
        """The weighted losses of a step."""
        raise NotImplementedError

    def validation(self, cfg: Params, sts: STSValidation | None, batches: LengthBucketedBatches | None) -> Any:
        """The epoch's judge: a callable taking the loop and returning scores by name."""
        raise NotImplementedError

    def extra_memory(self, model: torch.nn.Module, sentences: int, length: int) -> int:
        """Bytes a step needs beyond what the model family estimates (an LM head's logits)."""
        return 0
