"""The causal LM objective (``train.objective: clm``): the encoder student, made causal, predicts the next token.

The student stays a SentenceTransformer (Transformer + mean Pooling + Normalize), so
evaluation and the API use it unchanged; only its BERT is built with ``is_decoder=True``,
which makes self-attention causal and is saved in config.json, so ``SentenceTransformer(dir)``
reloads it causal. The LM head lives in the loss, like a distillation projection, so encoding
never pays for a vocabulary-wide output layer; its decoder is the student's word embeddings.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def make_causal(model: SentenceTransformer) -> SentenceTransformer:
    """Rebuild ``model``'s BERT with ``is_decoder=True`` (same weights, device, dtype and mode); return ``model``.

    Setting ``config.is_decoder`` on a built BertModel is not enough in transformers 5: each
    self-attention fixes ``is_causal`` when it is constructed, and the SDPA path reads that flag
    whenever there is no padding. Building the model from the causal config is the supported way,
    the same one ``from_pretrained`` takes on a saved causal student. The KV cache is switched off:
    training and :func:`generate` rerun the whole sequence. Call this before building the
    optimizer, which must see the new parameters.
    """
    transformer = model[0]
    backbone = transformer.auto_model
    config = copy.deepcopy(backbone.config)
    config.is_decoder = True
    config.use_cache = False
    causal = type(backbone)(config)
    causal.load_state_dict(backbone.state_dict())
    reference = next(backbone.parameters())
    transformer.model = causal.to(device=reference.device, dtype=reference.dtype).train(backbone.training)
    return model


class LMHead(nn.Module):
    """BERT's prediction head (dense, GELU, LayerNorm) whose vocabulary projection is the tied word embeddings.

    The tied matrix is the student's: the head keeps a reference to it, not a registration,
    because the trainer's optimizer and checkpoints walk the student and the objective
    separately and would otherwise update and store it twice. Gradients still reach it.
    """

    def __init__(self, word_embeddings: nn.Parameter, layer_norm_eps: float = 1e-12):
        super().__init__()
        vocab_size, hidden_size = word_embeddings.shape
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.tied = (word_embeddings,)

    @classmethod
    def for_student(cls, model: SentenceTransformer) -> LMHead:
        """A head tied to ``model``'s word embeddings, with its BERT's LayerNorm epsilon."""
        backbone = model[0].auto_model
        head = cls(backbone.get_input_embeddings().weight, backbone.config.layer_norm_eps)
        return head.to(backbone.device)

    @property
    def word_embeddings(self) -> nn.Parameter:
        return self.tied[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary for each hidden state ([..., H] -> [..., V])."""
        return F.linear(self.norm(F.gelu(self.dense(hidden))), self.word_embeddings, self.bias)


@dataclass
class LMScore:
    """Summed next-token loss and counts over any number of batches, so means are token-weighted and exact."""

    loss_sum: float = 0.0
    tokens: int = 0
    correct: int = 0

    def add(self, other: LMScore) -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.correct += other.correct

    @property
    def loss(self) -> float:
        """Mean cross-entropy per predicted token; NaN when nothing was predicted."""
        return self.loss_sum / self.tokens if self.tokens else math.nan

    @property
    def token_accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        """exp(mean loss); inf where that overflows a float (an untrained model's early epochs can)."""
        try:
            return math.exp(self.loss)
        except OverflowError:
            return math.inf


class CausalLMLoss(nn.Module):
    """Next-token cross-entropy: position t predicts ``input_ids[:, t + 1]``.

    A position counts when both it and its target are real tokens (attention mask 1), so
    padding is neither predicted nor predicted from. Only those positions reach the head:
    the vocabulary-wide logits are the biggest tensor of a step.
    """

    def __init__(self, head: LMHead):
        super().__init__()
        self.head = head

    def select(self, step: Any) -> tuple[torch.Tensor, ...]:
        """What it reads of one training step's outputs: the anchors' token states, ids and mask."""
        first = step.outputs[0]
        return first["token_embeddings"], first["input_ids"], first["attention_mask"]

    def forward(
        self, token_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over the batch's predicted tokens; 0 (not NaN) when it has none."""
        logits, targets = self.predictions(token_embeddings, input_ids, attention_mask)
        return F.cross_entropy(logits.float(), targets, reduction="sum") / max(len(targets), 1)

    @torch.no_grad()
    def score(self, token_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LMScore:
        """Summed loss, token count and correct argmax count of one batch, for :class:`LMScore` aggregation."""
        logits, targets = self.predictions(token_embeddings, input_ids, attention_mask)
        return LMScore(
            loss_sum=float(F.cross_entropy(logits.float(), targets, reduction="sum")),
            tokens=len(targets),
            correct=int((logits.argmax(dim=-1) == targets).sum()),
        )

    def predictions(
        self, token_embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, V] and target ids [N] of the N positions whose next token is predicted."""
        present = attention_mask.bool()
        counted = present[:, :-1] & present[:, 1:]
        return self.head(token_embeddings[:, :-1][counted]), input_ids[:, 1:][counted]


@torch.no_grad()
def generate(model: SentenceTransformer, head: LMHead, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt`` by the causal student, as text (special tokens skipped).

    The prompt is cut without its trailing [SEP], so the model continues the sentence rather
    than starting after its end; decoding stops at [SEP], after ``max_new_tokens`` tokens, or at
    the model's ``max_seq_length``. No KV cache: the whole sequence is rerun for each token,
    cheap at sentence length. Both modules run in eval mode and get their modes back after.
    """
    transformer = model[0]
    tokenizer = transformer.tokenizer
    ids = tokenizer(prompt)["input_ids"]
    if ids and ids[-1] == tokenizer.sep_token_id:
        ids = ids[:-1]
    budget = min(max_new_tokens, model.max_seq_length - len(ids))
    modes = model.training, head.training
    model.eval()
    head.eval()
    try:
        generated: list[int] = []
        for _ in range(budget):
            input_ids = torch.tensor([ids + generated], device=model.device)
            features = transformer({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
            next_id = int(head(features["token_embeddings"][0, -1]).argmax())
            if next_id == tokenizer.sep_token_id:
                break
            generated.append(next_id)
    finally:
        model.train(modes[0])
        head.train(modes[1])
    return tokenizer.decode(generated, skip_special_tokens=True)
