"""``train.objective: clm``: the encoder student, made causal, predicts the next token (``models.causal_lm``).

Each epoch it is judged by its token-weighted loss, token accuracy and perplexity on the validation split,
STS Spearman of its mean-pooled states, and greedy continuations of fixed prompts kept in the history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedforge.errors import UserError
from embedforge.objectives.base import TrainingObjective

if TYPE_CHECKING:
    from embedforge.training.batches import LengthBucketedBatches
    from embedforge.training.hooks import Loop
    from embedforge.training.validation import STSValidation

LOGIT_TENSORS = 3  # logits, their log-softmax and its gradient: 4 bytes x vocabulary per token


class CausalLMObjective(TrainingObjective):
    name = "clm"

    def prepare(self, model):
        from embedforge.models.causal_lm import make_causal

        return make_causal(model)

    def losses(self, cfg, model, teacher_dim, family):
        from embedforge.models.causal_lm import CausalLMLoss, LMHead
        from embedforge.training.losses import Objective

        return Objective({"clm": 1.0}, {"clm": CausalLMLoss(LMHead.for_student(model))})

    def validation(self, cfg, sts, batches):
        params = cfg.train
        if batches is None:
            raise UserError(
                f"train.objective: clm reports perplexity on the {params.validation_split!r} split of "
                f"{', '.join(params.datasets)}, which was not downloaded (train.validation_split)"
            )
        return LanguageModelValidation(sts, batches, params.clm.prompts, params.clm.max_new_tokens)

    def extra_memory(self, model, sentences, length):
        return LOGIT_TENSORS * 4 * sentences * length * len(model.tokenizer)


class LanguageModelValidation:
    """The causal LM's epoch: ``val_loss``, token accuracy, perplexity = exp(val_loss), STS Spearman and the
    continuations of ``prompts``."""

    def __init__(
        self, sts: STSValidation | None, batches: LengthBucketedBatches, prompts: list[str], max_new_tokens: int
    ):
        self.sts, self.batches = sts, batches
        self.prompts, self.max_new_tokens = prompts, max_new_tokens

    def __call__(self, loop: Loop) -> dict[str, float | None]:
        import torch

        from embedforge.models.causal_lm import LMScore, generate

        head = loop.objective.losses[CausalLMObjective.name]  # the loss this objective built
        was_training = loop.model.training
        loop.model.eval()
        score = LMScore()
        with torch.no_grad():
            for batch in self.batches.epoch(0):
                with loop.autocast():
                    features = loop.features(batch.anchors)
                    score.add(
                        head.score(features["token_embeddings"], features["input_ids"], features["attention_mask"])
                    )
            loop.model.train(was_training)
            epoch = len(loop.history["epochs"]) + 1
            generations = [
                {
                    "epoch": epoch,
                    "prompt": prompt,
                    "continuation": generate(loop.model, head.head, prompt, self.max_new_tokens),
                }
                for prompt in self.prompts
            ]
        loop.history.setdefault("generations", []).extend(generations)
        loop.log_text(
            "\n".join(f"{row['prompt']} -> {row['continuation']}" for row in generations) + "\n",
            f"generations/epoch_{epoch:03d}.txt",
        )
        scores: dict[str, float | None] = {"sts_spearman": self.sts(loop)} if self.sts is not None else {}
        scores.update({"val_loss": score.loss, "token_accuracy": score.token_accuracy, "perplexity": score.perplexity})
        return scores
