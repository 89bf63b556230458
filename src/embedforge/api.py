"""Use a trained model: ``similarity(a, b)`` and ``search(query, candidates, top_k)``.

    from embedforge import load_model
    model = load_model("models/student")
    model = load_model("models/export", backend="onnx")                     # ONNX Runtime alone, no torch
    model.similarity("A man plays a guitar.", "Someone is playing music.")   # cosine, -1..1
    model.search("a dog in the snow", candidates, top_k=3)                  # [(text, score), ...]
    model.search("refund for a late order", tickets)                        # long texts: by their best chunk
    model.search("refund for a late order", tickets, pooling="mean")        # or by their chunks' mean

A student is an ordinary SentenceTransformer directory; this only adds the checks,
the two calls people reach for first, and long texts: a text longer than the model
reads is cut into chunks as the pipeline cuts documents (``data.chunks``, by the
model's own tokenizer at its ``max_seq_length``) and scored from all of them, never
truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.errors import UserError

if TYPE_CHECKING:
    from embedforge.data.chunks import Chunker

POOLINGS = ("mean", "max_sim")


def load_sentence_transformer(path: str | Path, device: str = "cpu") -> Any:
    """Load a SentenceTransformer directory, or say plainly why ``path`` is not one."""
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no model directory here; train one with `embedforge train`")
    if not (path / "modules.json").is_file():
        raise UserError(
            f"{path}: not a SentenceTransformer directory (no modules.json); "
            f"point at the output of `embedforge train` (models/student) or a model saved with .save()"
        )
    try:
        return SentenceTransformer(str(path), device=device, trust_remote_code=only_known_modules(path))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: cannot load the model: {exc}") from None


def only_known_modules(path: Path) -> bool:
    """Whether every module of the model is sentence-transformers' or embedforge's own (the lattice and dynamic
    families add theirs): only then may sentence-transformers import a module class it does not ship, and the code
    it imports is this installed package's, never code from the model directory."""
    types = [module["type"] for module in json.loads((path / "modules.json").read_text(encoding="utf-8"))]
    return any(t.startswith("embedforge.") for t in types) and all(
        t.startswith(("embedforge.", "sentence_transformers.")) for t in types
    )


@dataclass(frozen=True)
class Match:
    text: str
    score: float


def chunker_of(model: Any) -> Chunker | None:
    """How ``model`` cuts a long text: by its own fast tokenizer at its ``max_seq_length``; None for a model that
    reads any length (the static family's mean) or has no tokenizer that maps tokens back to characters."""
    tokenizer, limit = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
    if not limit or not getattr(tokenizer, "is_fast", False):
        return None
    from embedforge.data.chunks import Chunker  # pyarrow and pandas: loaded with a model, not with the package

    return Chunker(tokenizer, limit, 0)


class Embedder:
    """A loaded model with cosine ``similarity`` and exact ``search``, over texts of any length."""

    def __init__(self, model: Any):
        self.model = model
        self.chunker = chunker_of(model)

    def chunk_vectors(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length vectors of every chunk of ``texts`` (one for a text that fits), and each one's text."""
        units = [chunked.units for chunked in self.chunker.split(texts)] if self.chunker else [[t] for t in texts]
        owner = np.repeat(np.arange(len(texts)), [len(parts) for parts in units])
        flat = [unit for parts in units for unit in parts]
        vectors = self.model.encode(flat, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return vectors, owner

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text; a long text's is the normalised mean of its chunks'."""
        vectors, owner = self.chunk_vectors(texts, batch_size)
        pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        np.add.at(pooled, owner, vectors)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def similarity(self, first: str, second: str) -> float:
        vectors = self.embed([first, second])
        return float(vectors[0] @ vectors[1])

    def search(self, query: str, candidates: list[str], top_k: int = 5, pooling: str = "max_sim") -> list[Match]:
        """The ``top_k`` candidates most similar to ``query``, best first. A long candidate is scored from its
        chunks: its best chunk (``max_sim``, as evaluate's default), or their pooled vector (``mean``)."""
        if top_k < 1:
            raise UserError(f"search: top_k must be >= 1, got {top_k}")
        if pooling not in POOLINGS:
            raise UserError(f"search: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not candidates:
            return []
        query_vector = self.embed([query])[0]
        if pooling == "mean":
            scores = self.embed(candidates) @ query_vector
        else:
            vectors, owner = self.chunk_vectors(candidates)
            scores = np.full(len(candidates), -np.inf, dtype=np.float32)
            np.maximum.at(scores, owner, vectors @ query_vector)
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [Match(candidates[i], float(scores[i])) for i in best]


BACKENDS = ("torch", "onnx")


def load_model(
    path: str | Path = "models/student", device: str = "cpu", backend: str = "torch", variant: str = "onnx_fp32"
) -> Embedder:
    """A student to embed and search with: ``backend="torch"`` loads a SentenceTransformer directory (train's
    ``models/student``); ``backend="onnx"`` loads export's ``models/export`` with ONNX Runtime alone, as the
    ``serve`` extra installs it (``variant``: ``onnx_fp32`` or ``onnx_int8``), and never imports torch."""
    if backend == "onnx":
        from embedforge.models.onnx_student import OnnxStudent

        return Embedder(OnnxStudent(path, variant))
    if backend != "torch":
        raise UserError(f"load_model: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return Embedder(load_sentence_transformer(path, device))
