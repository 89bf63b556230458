"""Use a trained model: ``similarity(a, b)`` and ``search(query, candidates, top_k)``.

    from embedforge import load_model
    model = load_model("models/student")
    model.similarity("A man plays a guitar.", "Someone is playing music.")   # cosine, -1..1
    model.search("a dog in the snow", candidates, top_k=3)                  # [(text, score), ...]

A student is an ordinary SentenceTransformer directory; this only adds the checks
and the two calls people reach for first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.errors import UserError


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


class Embedder:
    """A loaded model with cosine ``similarity`` and exact ``search``."""

    def __init__(self, model: Any):
        self.model = model

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    def similarity(self, first: str, second: str) -> float:
        vectors = self.embed([first, second])
        return float(vectors[0] @ vectors[1])

    def search(self, query: str, candidates: list[str], top_k: int = 5) -> list[Match]:
        """The ``top_k`` candidates most similar to ``query``, best first."""
        if top_k < 1:
            raise UserError(f"search: top_k must be >= 1, got {top_k}")
        if not candidates:
            return []
        vectors = self.embed([query, *candidates])
        scores = vectors[1:] @ vectors[0]
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [Match(candidates[i], float(scores[i])) for i in best]


def load_model(path: str | Path = "models/student", device: str = "cpu") -> Embedder:
    return Embedder(load_sentence_transformer(path, device))
