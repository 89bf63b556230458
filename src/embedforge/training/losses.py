"""Training objectives: InfoNCE over in-batch candidates, distillation to teacher vectors, and their weighted sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedforge.models.dynamic import sparsity_penalty


class InfoNCELoss(nn.Module):
    """Each anchor must pick its own positive among every positive and hard negative of the batch.

    The loss of sentence-transformers' MultipleNegativesRankingLoss: cross-entropy over
    cosine similarities scaled by ``1 / temperature``. Identical texts give equal scores,
    so the loss is log(candidates) there, finite, never NaN.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.scale = 1.0 / temperature

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

    A student narrower than the teacher gets a learned linear map into the teacher's
    space; it exists for training only and is not part of the saved model.
    """

    def __init__(self, student_dim: int, teacher_dim: int, kind: str = "mse", force_projection: bool = False):
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"unknown distillation loss {kind!r}; use 'mse' or 'cosine'")
        self.kind = kind
        same = student_dim == teacher_dim and not force_projection
        self.projection = nn.Identity() if same else nn.Linear(student_dim, teacher_dim)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mapped = self.projection(student)
        if self.kind == "mse":
            return F.mse_loss(mapped, teacher)
        return (1 - F.cosine_similarity(mapped, teacher, dim=-1)).mean()


class SparsityLoss(nn.Module):
    """The dynamic family's pull towards sparse embeddings (see ``models.dynamic.sparsity_penalty``)."""

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return sparsity_penalty(embeddings)


class Objective(nn.Module):
    """The weighted sum of the enabled losses; also returns each part for logging."""

    def __init__(self, weights: dict[str, float], losses: dict[str, nn.Module]):
        super().__init__()
        self.weights = {name: weight for name, weight in weights.items() if weight > 0}
        missing = sorted(set(self.weights) - set(losses))
        if missing:
            raise ValueError(f"no loss for objective(s) {', '.join(missing)}")
        self.losses = nn.ModuleDict({name: losses[name] for name in self.weights})

    def forward(self, inputs: dict[str, tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total and each part, detached but still on the device: reading them waits for it, so only
        logging steps do."""
        parts = {name: self.losses[name](*inputs[name]) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}
