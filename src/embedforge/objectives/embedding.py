"""``train.objective: embedding``: sentence embeddings trained by InfoNCE over pairs, distillation onto the
teacher's vectors, or both (``train.objectives`` weighs them), plus any loss the model family adds."""

from __future__ import annotations

from embedforge.objectives.base import TrainingObjective


class EmbeddingObjective(TrainingObjective):
    name = "embedding"

    def losses(self, cfg, model, teacher_dim, family):
        from embedforge.training.losses import DistillLoss, InfoNCELoss, Objective

        params = cfg.train
        weights: dict[str, float] = dict(params.objectives)
        losses = {"infonce": InfoNCELoss(params.temperature)}
        if teacher_dim is not None:
            losses["distill"] = DistillLoss(
                model.get_embedding_dimension(),
                teacher_dim,
                params.distill_loss,
                force_projection=family.projects_to_teacher,
            )
        for name, (weight, loss) in family.extra_losses(cfg.model).items():
            weights[name], losses[name] = weight, loss
        return Objective(weights, losses)

    def validation(self, cfg, sts, batches):
        from embedforge.training.validation import Validation

        return Validation(sts, batches)
