"""The ``encoder`` student: a small BERT sized by ``model.*``, saved and loaded as a SentenceTransformer.

``model.init: teacher_layers`` starts the student from the teacher's embeddings and a
chosen subset of its layers (student layer i = teacher layer ``teacher_layers[i]``):
the proven way to a small, strong student. ``scratch`` starts from seeded random weights.
Either way the result is Transformer + mean Pooling + Normalize, so ``model.save(dir)``
gives a directory that ``SentenceTransformer(dir)`` loads with nothing from this package.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from embedforge.config import max_length_problem
from embedforge.errors import UserError
from embedforge.models import count_parameters

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerBase

    from embedforge.config import ModelParams

FP32_BYTES = 4
ADAMW_STATES = 2  # AdamW, the trainer's optimizer, keeps two moments per parameter
# Activation bytes a BERT layer keeps per token for the backward pass, in fp32, after Korthikanti
# et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", section 4.1) with
# every tensor at 4 bytes, dropout masks included as PyTorch's CPU dropout keeps them: 40 per hidden
# unit (attention inputs and outputs, layer norms, dropout masks), 8 per intermediate unit (GELU
# input and output) and 12 per head and key position (attention scores, softmax, dropout mask). On
# CPU this is within 5% of the tensors autograd saves; fused attention (CUDA, or no dropout) keeps
# no scores and CUDA keeps 1-byte masks, so there it errs high, the safe side for a batch size.
ACTIVATION_BYTES_PER_HIDDEN = 40
ACTIVATION_BYTES_PER_INTERMEDIATE = 8
ACTIVATION_BYTES_PER_HEAD_POSITION = 12


def build_encoder(
    params: ModelParams, tokenizer_dir: Path, max_length: int, teacher_path: Path | None, seed: int
) -> SentenceTransformer:
    """A new student with ``tokenizer_dir``'s vocabulary, on the CPU, ready to train.

    ``teacher_path`` (a SentenceTransformer directory) is needed only for
    ``init: teacher_layers``; every way the teacher does not fit is refused before any
    weights are built.
    """
    import torch
    from transformers import AutoTokenizer, BertModel

    if problem := max_length_problem(max_length, params.max_positions):
        raise UserError(problem)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = bert_config(params, tokenizer)
    teacher = None
    if params.init == "teacher_layers":
        teacher = load_teacher(teacher_path)
        refuse_mismatches(params, tokenizer, teacher, teacher_path)
        for name in ("hidden_act", "layer_norm_eps", "type_vocab_size"):
            setattr(config, name, getattr(teacher.auto_model.config, name))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = BertModel(config)
    if teacher is not None:
        copy_teacher_layers(teacher.auto_model, backbone, params.teacher_layers)
    return as_sentence_transformer(backbone, tokenizer, max_length, params.attention)


def enable_checkpointing(model: SentenceTransformer) -> None:
    """transformers' activation checkpointing of every BERT layer (non-reentrant, as torch recommends)."""
    model[0].auto_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def bert_config(params: ModelParams, tokenizer: PreTrainedTokenizerBase) -> BertConfig:
    """Sizes from params; the vocabulary, padding id included, from the tokenizer the data was cut with."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        intermediate_size=params.intermediate_size,
        hidden_dropout_prob=params.dropout,
        attention_probs_dropout_prob=params.dropout,
        max_position_embeddings=params.max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_teacher(teacher_path: Path | None) -> Transformer:
    """The teacher's Transformer module, whose BERT weights seed the student."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    if teacher_path is None:
        raise UserError("model.init is 'teacher_layers' but no teacher was given (precompute.teacher)")
    module = SentenceTransformer(str(teacher_path), device="cpu")[0]
    teacher = getattr(module, "auto_model", None)
    if not isinstance(teacher, BertModel):
        raise UserError(
            f"model.init: teacher_layers copies BERT layers, but the teacher at {teacher_path} is a "
            f"{type(module if teacher is None else teacher).__name__}; use model.init: scratch"
        )
    return module


def refuse_mismatches(
    params: ModelParams, tokenizer: PreTrainedTokenizerBase, teacher: Transformer, teacher_path: Path
) -> None:
    """Raise one UserError listing every way the student cannot hold the teacher's weights."""
    config = teacher.auto_model.config
    problems = [
        f"model.{key} ({ours}) must equal the teacher's {what} ({theirs})"
        for key, what, ours, theirs in [
            ("hidden_size", "hidden size", params.hidden_size, config.hidden_size),
            ("intermediate_size", "intermediate size", params.intermediate_size, config.intermediate_size),
            ("num_heads", "attention heads", params.num_heads, config.num_attention_heads),
        ]
        if ours != theirs
    ]
    beyond = [index for index in params.teacher_layers if index >= config.num_hidden_layers]
    if beyond:
        problems.append(
            f"model.teacher_layers names {beyond}, beyond the teacher's {config.num_hidden_layers} layers "
            f"(0..{config.num_hidden_layers - 1})"
        )
    problems += embedding_problems(tokenizer, teacher, params.max_positions)
    if problems:
        raise UserError(
            f"model.init: teacher_layers cannot copy the teacher at {teacher_path} "
            f"(or set model.init: scratch):\n" + "\n".join(f"  {problem}" for problem in problems)
        )


def embedding_problems(tokenizer: PreTrainedTokenizerBase, teacher: Transformer, max_positions: int) -> list[str]:
    """Every way the teacher's embedding layer cannot serve ``tokenizer``'s ids at ``max_positions`` positions."""
    config = teacher.auto_model.config
    problems = []
    if max_positions > config.max_position_embeddings:
        problems.append(
            f"model.max_positions ({max_positions}) must be <= the teacher's "
            f"{config.max_position_embeddings} position embeddings"
        )
    teacher_rows = teacher.auto_model.get_input_embeddings().num_embeddings
    if len(tokenizer) != teacher_rows:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens but the teacher's word embeddings have {teacher_rows} rows: "
            f"use the teacher's vocabulary (tokenize.tokenizer: teacher, tokenize.train_vocab: null)"
        )
    elif tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        problems.append(
            "the tokenizer's vocabulary is not the teacher's, so its word embeddings would be misread: "
            "use the teacher's vocabulary (tokenize.tokenizer: teacher, tokenize.train_vocab: null)"
        )
    return problems


def copy_teacher_layers(teacher: BertModel, student: BertModel, layers: list[int]) -> None:
    """The teacher's embeddings (cut to the student's positions) and its layers ``layers``, in that order."""
    embeddings = teacher.embeddings.state_dict()
    positions = student.config.max_position_embeddings
    embeddings["position_embeddings.weight"] = embeddings["position_embeddings.weight"][:positions]
    student.embeddings.load_state_dict(embeddings)
    for index, source in enumerate(layers):
        student.encoder.layer[index].load_state_dict(teacher.encoder.layer[source].state_dict())


def as_sentence_transformer(
    backbone: BertModel, tokenizer: PreTrainedTokenizerBase, max_length: int, attention: str = "sdpa"
) -> SentenceTransformer:
    """Transformer + mean Pooling + Normalize around ``backbone``, computing attention with ``attention``.

    ST's Transformer module loads only from a directory, so the backbone passes through
    a temporary one; the loaded weights are in memory, independent of that directory.
    The attention kernel is not saved with it: a saved student loads with sdpa.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    with tempfile.TemporaryDirectory(prefix="embedforge-encoder-") as directory:
        backbone.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        transformer = Transformer(directory, max_seq_length=max_length, model_kwargs={"attn_implementation": attention})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def estimate_memory_bytes(model: SentenceTransformer, batch_size: int, max_length: int) -> dict[str, int]:
    """Bytes one fp32 training step needs, to refuse or shrink a batch before training starts.

    Weights, gradients and the optimizer's states (AdamW: 2 per parameter) take 4 bytes
    per parameter each; activations grow linearly with ``batch_size`` (constants above). With
    gradient checkpointing only each layer's input stays, plus one layer's activations while
    backward recomputes it.
    An estimate for planning, not an allocator trace: framework and CUDA context overhead
    are not included.
    """
    backbone = model[0].auto_model
    config = backbone.config
    parameters = count_parameters(model)
    per_token_layer = (
        ACTIVATION_BYTES_PER_HIDDEN * config.hidden_size
        + ACTIVATION_BYTES_PER_INTERMEDIATE * config.intermediate_size
        + ACTIVATION_BYTES_PER_HEAD_POSITION * config.num_attention_heads * max_length
    )
    if backbone.is_activation_checkpointing:  # each layer's input kept, one layer's activations at a time
        per_token = config.num_hidden_layers * FP32_BYTES * config.hidden_size + per_token_layer
    else:
        per_token = config.num_hidden_layers * per_token_layer
    estimate = {
        "weights": FP32_BYTES * parameters,
        "gradients": FP32_BYTES * parameters,
        "optimizer": FP32_BYTES * parameters * ADAMW_STATES,
        "activations": batch_size * max_length * per_token,
    }
    estimate["total"] = sum(estimate.values())
    return estimate
