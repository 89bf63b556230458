"""The ``static`` student: a table of token vectors, their mean over a sentence, an optional linear map, and
normalisation. No attention and no layers: encoding costs a tokenization and a lookup, hundreds of times less
than an encoder on a CPU (model2vec's potion models, sentence-transformers' ``StaticEmbedding``).

``model.init: teacher_tokens`` builds the table from the teacher alone, without data, as model2vec does: every
vocabulary token passed alone through the teacher (``[CLS] token [SEP]``, pooled as the teacher pools), PCA to
``model.static.dim``, and each row scaled by a SIF weight ``a / (a + p)``, ``p`` the token's frequency as Zipf's
law estimates it from its rank in the vocabulary. ``scratch`` starts from seeded random rows. Training then
distils the table onto the teacher's vectors of the corpus sentences (the train stage's ``distill`` objective).

The saved model is sentence-transformers' own StaticEmbedding (+ Dense) + Normalize, so ``SentenceTransformer(dir)``
loads it without ``trust_remote_code``. Its table is stored in float16, as model2vec stores its own (``save_student``).
StaticEmbedding tokenizes without special tokens; training feeds it the
tokenize stage's padded ids as the same bags (``bag_inputs``), so a sentence is the same bag in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from embedforge.errors import UserError
from embedforge.models.encoder import ADAMW_STATES, FP32_BYTES

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from embedforge.config import ModelParams

TOKENS_PER_BATCH = 1024  # vocabulary tokens passed through the teacher at once by teacher_tokens
# Tensors of batch x dim autograd keeps per sentence: the bag means, the map's output, the normalised vector.
ACTIVATIONS_PER_DIM = 3
ID_BYTES = 8  # int64 token ids, which the lookup keeps for backward


def load_vocabulary(tokenizer_dir: Path) -> Tokenizer:
    """The tokenize stage's tokenizer as the fast ``tokenizers.Tokenizer`` StaticEmbedding holds."""
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; model.kind: static needs a fast tokenizer (run `embedforge tokenize`)")
    return Tokenizer.from_file(str(path))


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of [CLS], [SEP], [PAD] and the like, which StaticEmbedding's own tokenization never yields."""
    return sorted(index for index, token in tokenizer.get_added_tokens_decoder().items() if token.special)


def teacher_token_vectors(teacher: SentenceTransformer, tokenizer: Tokenizer) -> np.ndarray:
    """The teacher's pooled (not normalised) vector of each vocabulary token alone, as ``[CLS] token [SEP]``."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    vocabulary = tokenizer.get_vocab_size()
    first, last = (tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]"))
    if first is None or last is None:
        raise UserError("model.init: teacher_tokens needs a BERT-style vocabulary with [CLS] and [SEP]")
    pooling = [module for module in teacher if not isinstance(module, Normalize)]
    chunks = []
    with torch.inference_mode():
        for start in range(0, vocabulary, TOKENS_PER_BATCH):
            ids = torch.arange(start, min(start + TOKENS_PER_BATCH, vocabulary))
            input_ids = torch.stack([torch.full_like(ids, first), ids, torch.full_like(ids, last)], dim=1)
            features: dict[str, Any] = {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "token_type_ids": torch.zeros_like(input_ids),
            }
            for module in pooling:
                features = module(features)
            chunks.append(features["sentence_embedding"].float().numpy())
    return np.concatenate(chunks)


def principal_components(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` centred and projected onto their ``dim`` leading principal axes, each axis's sign fixed (its
    largest loading positive) so the same vectors always give the same table."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0, dtype=np.float64)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:dim]
    signs = np.sign(axes[np.arange(dim), np.abs(axes).argmax(axis=1)])
    return centred @ (axes * signs[:, None]).T


def sif_weights(vocabulary: int, coefficient: float) -> np.ndarray:
    """``a / (a + p(rank))`` with ``p`` Zipf's estimate of the frequency of the token at each rank (id order)."""
    inverse_rank = 1.0 / np.arange(2, vocabulary + 2, dtype=np.float64)
    return coefficient / (coefficient + inverse_rank / inverse_rank.sum())


def teacher_token_table(params: ModelParams, tokenizer: Tokenizer, teacher_path: Path | None) -> torch.Tensor:
    """The model2vec table: the teacher's token vectors, PCA to ``model.static.dim``, SIF-weighted."""
    from sentence_transformers import SentenceTransformer

    if teacher_path is None:
        raise UserError("model.init is 'teacher_tokens' but no teacher was given (precompute.teacher)")
    teacher = SentenceTransformer(str(teacher_path), device="cpu")
    theirs = teacher.tokenizer.get_vocab() if hasattr(teacher.tokenizer, "get_vocab") else None
    if theirs != tokenizer.get_vocab():
        raise UserError(
            f"model.init: teacher_tokens reads the teacher's vector of every token, so the student needs the "
            f"teacher's vocabulary (tokenize.tokenizer: teacher); the tokenize stage's differs from {teacher_path}'s"
        )
    dim, teacher_dim = params.static.dim, teacher.get_embedding_dimension()
    if dim > teacher_dim:
        raise UserError(
            f"model.static.dim ({dim}) must be at most the teacher's dimension ({teacher_dim}) with "
            f"model.init: teacher_tokens, whose PCA cannot add dimensions"
        )
    table = principal_components(teacher_token_vectors(teacher, tokenizer), dim)
    if params.static.sif_coefficient is not None:
        table *= sif_weights(len(table), params.static.sif_coefficient)[:, None]
    return torch.from_numpy(table.astype(np.float32))


def build_student(
    params: ModelParams, tokenizer_dir: Path, max_length: int, teacher_path: Path | None, seed: int
) -> SentenceTransformer:
    """The ``static`` family: StaticEmbedding over the tokenize stage's vocabulary, (Dense,) Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

    tokenizer = load_vocabulary(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if params.init == "teacher_tokens":
            table = teacher_token_table(params, tokenizer, teacher_path)
        else:
            table = torch.randn(tokenizer.get_vocab_size(), params.static.dim) / params.static.dim**0.5
        modules: list[torch.nn.Module] = [StaticEmbedding(tokenizer, embedding_weights=table)]
        if params.static.projection_dim is not None:
            modules.append(
                Dense(params.static.dim, params.static.projection_dim, activation_function=torch.nn.Identity())
            )
    modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


def save_student(model: SentenceTransformer, directory: Path) -> SentenceTransformer:
    """Save the student with its table in float16: half the bytes of float32, and the rounding moves a vector by
    about 1e-3 of its length. The table is written in model2vec's layout (``embeddings`` and per-token
    ``weights``, here all 1), which StaticEmbedding.load folds back into a float32 table, so the model loads
    without ``trust_remote_code`` and runs in float32 beside its Dense. Checkpoints keep float32, for exact resumes.
    Returns the model as loaded from ``directory``.
    """
    import json

    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    model.save(str(directory))
    modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    index = next(i for i, module in enumerate(model) if isinstance(module, StaticEmbedding))
    table = model[index].embedding.weight.detach()
    save_file(
        {"embeddings": table.half().contiguous(), "weights": torch.ones(len(table), dtype=torch.float16)},
        str(directory / modules[index]["path"] / "model.safetensors"),
    )
    return SentenceTransformer(str(directory), device="cpu")


def bag_inputs(model: SentenceTransformer) -> Any:
    """How a padded batch of the tokenize stage's ids becomes StaticEmbedding's input: each row's tokens, special
    ones and padding left out, as one flat id list with each bag's offset (what its own tokenizer gives)."""
    left_out = torch.tensor(special_ids(model[0].tokenizer), dtype=torch.long)

    def inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        special = (input_ids.unsqueeze(-1) == left_out.to(input_ids.device)).any(dim=-1)  # isin, as ONNX can trace it
        kept = attention_mask.bool() & ~special
        lengths = kept.sum(dim=1)
        offsets = torch.cumsum(lengths, dim=0) - lengths
        return {"input_ids": input_ids[kept], "offsets": offsets}

    return inputs


def enable_checkpointing(model: SentenceTransformer) -> None:
    """Nothing to recompute: a lookup and a mean keep no activations worth trading for compute."""


def estimate_static_memory(model: SentenceTransformer, batch_size: int, max_length: int) -> dict[str, int]:
    """One training step's bytes: the table (vocabulary x dim) and any map, their dense gradients and AdamW's two
    moments, and a few batch x dim tensors (the lookup keeps only the ids for backward)."""
    parameters = sum(parameter.numel() for parameter in model.parameters())
    widths = [module.get_embedding_dimension() for module in model if hasattr(module, "get_embedding_dimension")]
    estimate = {
        "weights": FP32_BYTES * parameters,
        "gradients": FP32_BYTES * parameters,
        "optimizer": ADAMW_STATES * FP32_BYTES * parameters,
        "activations": batch_size * (FP32_BYTES * ACTIVATIONS_PER_DIM * max(widths) + ID_BYTES * max_length),
    }
    estimate["total"] = sum(estimate.values())
    return estimate
