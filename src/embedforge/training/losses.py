"""Training losses and their weighted sum. Each loss picks what it needs from one step's outputs (``select``) and
computes from plain tensors (``forward``), so the loop calls them without knowing which losses run.

A loss that needs the whole global batch of a distributed step (InfoNCE's candidates) says so with
``global_batch = True``; the loop then passes a ``gather`` that collects every rank's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepOutputs:
    """What one (micro-)batch gave: the model's outputs for each part (anchors, positives, hard negatives), the
    teacher's vectors of its sentences in the same order (when distilling), and the global batch's gather."""

    outputs: list[dict[str, torch.Tensor]]
    teacher: torch.Tensor | None = None
    gather: Callable[..., tuple[torch.Tensor, ...]] | None = None

    @property
    def embeddings(self) -> list[torch.Tensor]:
        return [output["sentence_embedding"] for output in self.outputs]

    def all_embeddings(self) -> torch.Tensor:
        """Every part's sentence embeddings, one after the other, in float32."""
        return torch.cat(self.embeddings).float()


class InfoNCELoss(nn.Module):
    """Each anchor must pick its own positive among every positive and hard negative of the batch.

    The loss of sentence-transformers' MultipleNegativesRankingLoss: cross-entropy over
    cosine similarities scaled by ``1 / temperature``. Identical texts give equal scores,
    so the loss is log(candidates) there, finite, never NaN.
    """

    global_batch = True

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.scale = 1.0 / temperature

    def select(self, step: StepOutputs) -> tuple[torch.Tensor | None, ...]:
        embeddings = step.embeddings
        negatives = embeddings[2] if len(embeddings) > 2 else None
        if step.gather is not None:
            return step.gather(embeddings[0], embeddings[1], negatives)
        return embeddings[0], embeddings[1], negatives

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``labels`` is where each anchor's positive is among the candidates: row i by default; gathered
        candidates of several ranks put this rank's positives further on."""
        candidates = positives if negatives is None else torch.cat([positives, negatives])
        scores = self.scale * F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T
        if labels is None:
            labels = torch.arange(len(anchors), device=anchors.device)
        return F.cross_entropy(scores, labels)


class DistillLoss(nn.Module):
    """Pull the student's vectors onto the teacher's (MSE, or 1 - cosine).

    A student narrower than the teacher (or one whose family asks for it) gets a learned
    linear map into the teacher's space; it exists for training only and is not part of
    the saved model.
    """

    def __init__(self, student_dim: int, teacher_dim: int, kind: str = "mse", force_projection: bool = False):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"unknown distillation loss {kind!r}; use 'mse' or 'cosine'")
        self.kind = kind
        same = student_dim == teacher_dim and not force_projection
        self.projection = nn.Identity() if same else nn.Linear(student_dim, teacher_dim)

    def select(self, step: StepOutputs) -> tuple[torch.Tensor, ...]:
        return step.all_embeddings(), step.teacher

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mapped = self.projection(student)
        if self.kind == "mse":
            return F.mse_loss(mapped, teacher)
        return (1 - F.cosine_similarity(mapped, teacher, dim=-1)).mean()


class Objective(nn.Module):
    """The weighted sum of the enabled losses; also returns each part for logging."""

    def __init__(self, weights: dict[str, float], losses: dict[str, nn.Module]):
        super().__init__()
        self.weights = {name: weight for name, weight in weights.items() if weight > 0}
        missing = sorted(set(self.weights) - set(losses))
        if missing:
            raise ValueError(f"no loss for objective(s) {', '.join(missing)}")
        self.losses = nn.ModuleDict({name: losses[name] for name in self.weights})

    @property
    def global_batch(self) -> bool:
        """Whether a loss compares each example with the whole global batch of a distributed step."""
        return any(getattr(loss, "global_batch", False) for loss in self.losses.values())

    def teacher_projection(self) -> nn.Module | None:
        """The map through which a loss reads the student in the teacher's space, if a loss has one."""
        return next((loss.projection for loss in self.losses.values() if isinstance(loss, DistillLoss)), None)

    def resize_student_input(self, change: Callable[[nn.Linear], nn.Linear]) -> None:
        """Apply ``change`` to every map that reads the student's embedding (its width changed)."""
        for loss in self.losses.values():
            if isinstance(loss, DistillLoss):
                loss.projection = change(loss.projection)

    def forward(self, step: StepOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total and each part, detached but still on the device: reading them waits for it, so only
        logging steps do."""
        parts = {name: self.losses[name](*self.losses[name].select(step)) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}
