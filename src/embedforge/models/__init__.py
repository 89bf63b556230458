"""The students' and the teacher's nn modules, and what every student shares.

The families that build students from params (``model.kind``) live a layer up, in ``embedforge.families``;
this package knows no family by name. Importing it (as every stage does for the teacher) must not load torch
and sentence-transformers.
"""

from __future__ import annotations

from typing import Any


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


def count_parameters(model: Any) -> int:
    """Every number the model holds, each shared tensor once."""
    return sum(parameter.numel() for parameter in model.parameters())
