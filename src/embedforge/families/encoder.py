"""The ``encoder`` family: a BERT-style transformer student, optionally started from the teacher's layers."""

from __future__ import annotations

from typing import ClassVar

from embedforge.families.base import Family


class EncoderFamily(Family):
    kind = "encoder"
    causal_lm: ClassVar[bool] = True

    def build(self, params, tokenizer_dir, max_length, teacher_path, seed):
        from embedforge.models.encoder import build_encoder

        return build_encoder(params, tokenizer_dir, max_length, teacher_path, seed)

    def estimate_memory(self, model, sentences, length):
        from embedforge.models.encoder import estimate_memory_bytes

        return estimate_memory_bytes(model, sentences, length)

    def enable_checkpointing(self, model):
        from embedforge.models.encoder import enable_checkpointing

        enable_checkpointing(model)
