"""The ``lattice`` student (``model.kind: lattice``): pooled token embeddings driving a 3D cellular lattice.

The lattice has xs × ys × zs cells of ``channels`` numbers each. The sentence vector (mean of the
token embeddings) is projected onto the input surface (x = 0); for ``steps`` iterations every cell
updates from its 26 neighbours and itself with rules shared by all cells (one 3D convolution and a
gate); the output surface (x = xs - 1) is then projected back to the embedding. The backbone is
BERT's embedding layer alone, so the lattice is all of the model's depth. A saved model reloads with
``SentenceTransformer(dir, trust_remote_code=True)`` wherever embedforge is importable: the Lattice
module is not part of sentence-transformers, which imports such classes only when trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from embedforge.config import max_length_problem
from embedforge.errors import UserError
from embedforge.models import count_parameters
from embedforge.models.encoder import (
    ADAMW_STATES,
    FP32_BYTES,
    as_sentence_transformer,
    copy_teacher_layers,
    embedding_problems,
    load_teacher,
)
from embedforge.models.modules import ConfiguredModule

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer
    from transformers import PreTrainedTokenizerBase

    from embedforge.config import ModelParams

LATTICE_MODES: dict[str, tuple[int, int, int]] = {
    "development": (10, 10, 10),
    "research": (20, 15, 15),
    "production": (30, 20, 20),
}
# The initial gate is sigmoid(3) ≈ 0.95: with the fewest steps (xs - 1) only the signal that moves
# one cell along x every step reaches the output surface, and a gate g lets g^(xs - 1) of it through
# (0.95^29 ≈ 0.23 in production, where a gate of 0.5 would let 2e-9 through and every sentence would
# map to the same vector). The state stays bounded at any gate: each update is a convex combination
# of the state and a tanh candidate in (-1, 1), and the re-injected input piles up at most 1 / gate times.
INITIAL_GATE_BIAS = 3.0
# Tensors autograd keeps per cell and channel for one step (see Lattice.step): the conv's input,
# which is also lerp's start, the tanh candidate and the sigmoid gate.
SAVED_TENSORS_PER_STEP = 3
# Bytes the embedding layer and mean pooling keep per token: 12 per hidden unit (the LayerNorm's input,
# the dropout mask, a float on the CPU, and the dropout's output, which BERT's unused pooler keeps alive
# by reading its first token) and 28 more (word and token type ids at 8 bytes each, the LayerNorm's mean
# and rstd, the pooling's mask).
EMBEDDING_BYTES_PER_HIDDEN = 12
EMBEDDING_BYTES_PER_TOKEN = 28
# Numbers kept per sentence besides: 3 vectors of the embedding dimension (the pooler's output, the pooled
# vector the lattice reads, the lattice's output Normalize reads) and 3 scalars (pooling's token count,
# Normalize's norm and its clamp).
SENTENCE_VECTORS_KEPT = 3
SENTENCE_SCALARS_KEPT = 3


def lattice_size(mode: str | None, size: list[int] | None) -> tuple[int, int, int]:
    """The lattice's (xs, ys, zs) from exactly one of ``model.lattice.mode`` and ``model.lattice.size``."""
    if (mode is None) == (size is None):
        raise UserError(
            "set exactly one of model.lattice.mode "
            f"({', '.join(LATTICE_MODES)}) and model.lattice.size ([xs, ys, zs]), "
            f"got mode={mode!r} and size={size!r}"
        )
    if size is not None:
        return checked_size(size)
    if mode not in LATTICE_MODES:
        raise UserError(f"model.lattice.mode: unknown mode {mode!r}; known: {', '.join(LATTICE_MODES)}")
    return LATTICE_MODES[mode]


def checked_size(size: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """Three sizes, at least 2 along x (the input and output surfaces are then distinct) and 1 along y, z."""
    if len(size) != 3:
        raise UserError(f"model.lattice.size must be [xs, ys, zs], got {list(size)}")
    xs, ys, zs = (int(extent) for extent in size)
    if xs < 2 or ys < 1 or zs < 1:
        raise UserError(f"model.lattice.size ({[xs, ys, zs]}) must be >= 2 along x and >= 1 along y and z")
    return xs, ys, zs


class Lattice(ConfiguredModule):
    """Replaces ``sentence_embedding`` [B, dim] by the lattice's output surface, projected back to [B, dim]."""

    config_keys: ClassVar[list[str]] = ["dim", "size", "channels", "steps"]

    def __init__(self, dim: int, size: list[int] | tuple[int, int, int], channels: int = 8, steps: int | None = None):
        super().__init__()
        xs, ys, zs = checked_size(size)
        steps = xs - 1 if steps is None else steps
        if steps < xs - 1:
            raise UserError(
                f"model.lattice.steps ({steps}) must be >= {xs - 1} (the lattice's x size - 1): in fewer steps "
                f"the output surface (x = {xs - 1}) never sees the input surface (x = 0)"
            )
        self.dim = dim
        self.size = [xs, ys, zs]
        self.channels = channels
        self.steps = steps
        surface = channels * ys * zs
        self.read_in = nn.Linear(dim, surface)
        self.rules = nn.Conv3d(channels, 2 * channels, kernel_size=3, padding=1)
        self.read_out = nn.Linear(surface, dim)
        self.checkpointed = False  # training only, not saved: see enable_checkpointing
        self._start_as_transport()

    @property
    def cells(self) -> int:
        xs, ys, zs = self.size
        return xs * ys * zs

    def _start_as_transport(self) -> None:
        """Start the rules as a transport along x, plus the conv's random init, so a fresh lattice's output
        depends on its input: candidate channel c reads channel c of the cell at x - 1, the candidate bias
        is zero (no input-independent offset), the gate is nearly open (see INITIAL_GATE_BIAS)."""
        channel = torch.arange(self.channels)
        with torch.no_grad():
            self.rules.weight[channel, channel, 0, 1, 1] += 1.0
            self.rules.bias[: self.channels].zero_()
            self.rules.bias[self.channels :].fill_(INITIAL_GATE_BIAS)

    def step(self, state: torch.Tensor) -> torch.Tensor:
        """One update of every cell [B, channels, xs, ys, zs] from its 3×3×3 neighbourhood, with shared rules.

        ``lerp(state, candidate, gate)`` is gate * candidate + (1 - gate) * state, keeping for backward
        only tensors the conv, tanh and sigmoid keep already (SAVED_TENSORS_PER_STEP).
        """
        candidate, gate = self.rules(state).chunk(2, dim=1)
        return torch.lerp(state, torch.tanh(candidate), torch.sigmoid(gate))

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        xs, ys, zs = self.size
        surface = self.read_in(features["sentence_embedding"]).view(-1, self.channels, 1, ys, zs)
        drive = nn.functional.pad(surface, (0, 0, 0, 0, 0, xs - 1))
        state = torch.zeros_like(drive)
        for _ in range(self.steps):
            if self.checkpointed and torch.is_grad_enabled():
                state = checkpoint(self.step, state + drive, use_reentrant=False)
            else:
                state = self.step(state + drive)
        features["sentence_embedding"] = self.read_out(state[:, :, -1].flatten(1))
        return features

    def get_embedding_dimension(self) -> int:
        return self.dim


def build_lattice(
    tokenizer_dir: Path,
    max_length: int,
    hidden_size: int,
    size: tuple[int, int, int],
    channels: int,
    steps: int | None,
    dropout: float,
    max_positions: int,
    teacher_path: Path | None,
    seed: int,
) -> SentenceTransformer:
    """A new lattice student with ``tokenizer_dir``'s vocabulary, on the CPU, ready to train.

    Transformer (BERT with no layers: token and position embeddings and their LayerNorm) + mean
    Pooling + Lattice + Normalize. With ``teacher_path`` the embeddings start as the teacher's.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize
    from transformers import AutoTokenizer, BertConfig, BertModel

    if problem := max_length_problem(max_length, max_positions):
        raise UserError(problem)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=0,
        num_attention_heads=1,
        hidden_dropout_prob=dropout,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    teacher = None
    if teacher_path is not None:
        teacher = load_teacher(teacher_path)
        refuse_teacher_mismatches(tokenizer, teacher, teacher_path, hidden_size, max_positions)
        for name in ("layer_norm_eps", "type_vocab_size"):
            setattr(config, name, getattr(teacher.auto_model.config, name))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = BertModel(config)
        lattice = Lattice(hidden_size, size, channels, steps)
    if teacher is not None:
        copy_teacher_layers(teacher.auto_model, backbone, [])
    embeddings = as_sentence_transformer(backbone, tokenizer, max_length)
    return SentenceTransformer(modules=[embeddings[0], embeddings[1], lattice, Normalize()], device="cpu")


def refuse_teacher_mismatches(
    tokenizer: PreTrainedTokenizerBase, teacher: Transformer, teacher_path: Path, hidden_size: int, max_positions: int
) -> None:
    """Raise one UserError listing every way the student's embeddings cannot hold the teacher's."""
    config = teacher.auto_model.config
    problems = []
    if hidden_size != config.hidden_size:
        problems.append(
            f"model.hidden_size ({hidden_size}) must equal the teacher's hidden size ({config.hidden_size})"
        )
    problems += embedding_problems(tokenizer, teacher, max_positions)
    if problems:
        raise UserError(
            f"the lattice student cannot start from the embeddings of the teacher at {teacher_path}:\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )


def enable_checkpointing(model: SentenceTransformer) -> None:
    """Keep only each step's input state for backward and recompute the step there (torch.utils.checkpoint)."""
    find_lattice(model).checkpointed = True


def find_lattice(model: SentenceTransformer) -> Lattice:
    """The model's Lattice module; a model without one is a programming error, not a user's."""
    for module in model:
        if isinstance(module, Lattice):
            return module
    raise ValueError("the model has no Lattice module")


def estimate_lattice_memory(model: SentenceTransformer, batch_size: int, max_length: int) -> dict[str, int]:
    """Bytes one fp32 training step needs, to refuse or shrink a batch before training starts.

    Weights, gradients and the optimizer's states (AdamW: 2 per parameter) take 4 bytes per
    parameter each. Activations follow the rule batch × channels × cells × 4 bytes, times the
    tensors kept per step (SAVED_TENSORS_PER_STEP) and the steps, plus the output surface the
    read-out keeps and the small embedding and pooling part (constants above). On the CPU this is
    exactly the tensors autograd saves for a batch of ``max_length`` tokens with dropout; otherwise
    it errs high: shorter batches, ``model.dropout: 0`` (no mask) or CUDA's 1-byte dropout masks.
    """
    lattice = find_lattice(model)
    parameters = count_parameters(model)
    _, ys, zs = lattice.size
    if lattice.checkpointed:  # every step's input kept, one step's tensors while backward recomputes it
        kept_states = lattice.steps + SAVED_TENSORS_PER_STEP
    else:
        kept_states = SAVED_TENSORS_PER_STEP * lattice.steps
    lattice_bytes = FP32_BYTES * lattice.channels * (kept_states * lattice.cells + ys * zs)
    embedding_bytes = max_length * (EMBEDDING_BYTES_PER_HIDDEN * lattice.dim + EMBEDDING_BYTES_PER_TOKEN)
    sentence_bytes = FP32_BYTES * (SENTENCE_VECTORS_KEPT * lattice.dim + SENTENCE_SCALARS_KEPT)
    per_sentence = lattice_bytes + embedding_bytes + sentence_bytes
    estimate = {
        "weights": FP32_BYTES * parameters,
        "gradients": FP32_BYTES * parameters,
        "optimizer": FP32_BYTES * parameters * ADAMW_STATES,
        "activations": batch_size * per_sentence,
    }
    estimate["total"] = sum(estimate.values())
    return estimate


def overfitting_warning(cells: int, dataset_size: int) -> str | None:
    """A warning when the lattice has more cells than a tenth of the training pairs, else None."""
    if cells <= dataset_size / 10:
        return None
    return (
        f"the lattice has {cells} cells, more than a tenth of the {dataset_size} training examples "
        f"({dataset_size / 10:g}), so it may over-fit: use a smaller model.lattice.mode or model.lattice.size, "
        f"or more data (at least {10 * cells} examples)"
    )


def build_student(
    params: ModelParams, tokenizer_dir: Path, max_length: int, teacher_path: Path | None, seed: int
) -> SentenceTransformer:
    """The ``lattice`` family from ``model.*``: the teacher's token embeddings (``init: teacher_layers``) or
    seeded random ones (``scratch``), pooled and driven through a ``model.lattice`` lattice."""
    lattice = params.lattice
    return build_lattice(
        tokenizer_dir,
        max_length,
        params.hidden_size,
        lattice_size(lattice.mode, lattice.size),
        lattice.channels,
        lattice.steps,
        params.dropout,
        params.max_positions,
        teacher_path if params.init == "teacher_layers" else None,
        seed,
    )


def advice(model: SentenceTransformer, examples: int) -> str | None:
    return overfitting_warning(find_lattice(model).cells, examples)
