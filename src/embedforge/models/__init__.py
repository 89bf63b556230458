"""Model families: the teacher, and the students trained by the train stage.

A family is how to build a new student from ``model.*`` (``build``), how many bytes
one training step of it needs (``estimate_memory``), so the train stage can size its
micro-batches before it starts, how to make it recompute its activations in backward
(``enable_checkpointing``), and what to warn about given the amount of training
data (``advise``). A family plugs in by adding itself to ``MODEL_FAMILIES`` under its
``model.kind``; every family's student is a SentenceTransformer. Families are named
by module and function, and imported on first use: importing this package (as every
stage does for the teacher) must not load torch and sentence-transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    module: str
    builder: str
    estimator: str
    adviser: str | None = None
    inputs: str | None = None  # a model taking other inputs than padded ids and mask: what converts them

    def function(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)

    @property
    def build(self) -> Any:
        """``build(params: ModelParams, tokenizer_dir, max_length, teacher_path, seed) -> SentenceTransformer``."""
        return self.function(self.builder)

    @property
    def estimate_memory(self) -> Any:
        """``estimate_memory(model, batch_size, max_length) -> {weights, gradients, optimizer, activations, total}``."""
        return self.function(self.estimator)

    @property
    def enable_checkpointing(self) -> Any:
        """``enable_checkpointing(model)``: keep only each layer's (or step's) input for backward, recomputing the
        rest there; ``estimate_memory`` then counts what is kept."""
        return self.function("enable_checkpointing")

    def model_inputs(self, model: Any) -> Any:
        """``inputs(input_ids, attention_mask) -> features`` turning a padded batch into what ``model`` takes."""
        if self.inputs is None:
            return padded_inputs
        return self.function(self.inputs)(model)

    def advise(self, model: Any, examples: int) -> str | None:
        """A warning about training this model on ``examples`` examples, or None."""
        return None if self.adviser is None else self.function(self.adviser)(model, examples)


MODEL_FAMILIES = {
    "encoder": ModelFamily("embedforge.models.encoder", "build_encoder", "estimate_memory_bytes"),
    "lattice": ModelFamily("embedforge.models.lattice", "build_student", "estimate_lattice_memory", "advice"),
    "dynamic": ModelFamily("embedforge.models.dynamic", "build_student", "estimate_dynamic_memory"),
    "static": ModelFamily("embedforge.models.static", "build_student", "estimate_static_memory", inputs="bag_inputs"),
}


def padded_inputs(input_ids: Any, attention_mask: Any) -> dict[str, Any]:
    """What a Transformer module takes: the padded ids and their mask."""
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def padding_id(model: Any) -> int:
    """The id the student's batches are padded with: a transformers tokenizer's, or [PAD] (every tokenizer
    the tokenize stage writes has it; a static student never reads padding)."""
    tokenizer = model.tokenizer
    return tokenizer.pad_token_id if hasattr(tokenizer, "pad_token_id") else tokenizer.token_to_id("[PAD]") or 0


def vocabulary_size(model: Any) -> int:
    """The student's vocabulary: a transformers tokenizer's length, or a ``tokenizers.Tokenizer``'s size."""
    tokenizer = model.tokenizer
    return tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else len(tokenizer)
