"""A student the export stage wrote, run by ONNX Runtime and the ``tokenizers`` library alone: no torch.

``models/export`` holds the graphs (``model.onnx``, ``model_int8.onnx``), the student's ``tokenizer.json`` and
``onnx.json`` (which graph is which variant, the padding id, the longest input the student reads). This is what
``load_model(path, backend="onnx")`` wraps, and what the ``serve`` extra (onnxruntime, tokenizers, numpy)
is enough to run: a serving image need not carry torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.errors import UserError

EXPORT_CONFIG = "onnx.json"
TOKENIZER_FILE = "tokenizer.json"
VARIANTS = ("onnx_fp32", "onnx_int8")


class OffsetTokenizer:
    """A ``tokenizers.Tokenizer`` with the two calls ``data.chunks.Chunker`` makes of a transformers tokenizer,
    so a long text is cut into the same chunks here as in the pipeline."""

    is_fast = True

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        processor = self.tokenizer.post_processor
        return processor.num_special_tokens_to_add(pair) if processor is not None else 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True, **_: Any) -> dict[str, list]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings], "offset_mapping": [e.offsets for e in encodings]}


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / EXPORT_CONFIG
    if not path.is_file():
        raise UserError(f"{directory}: no {EXPORT_CONFIG} here; point at the output of `embedforge export`")
    return json.loads(path.read_text(encoding="utf-8"))


def plain_tokenizer(directory: Path) -> Any:
    """The student's tokenizer, neither padding nor truncating: what cutting a long text into chunks reads."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def serving_tokenizer(directory: Path, config: dict[str, Any]) -> Any:
    """The student's tokenizer as the graph reads it: padded with its padding id, and truncated where the student
    reads at most ``max_seq_length`` tokens (``api.Embedder`` cuts a long text into chunks before it gets here)."""
    tokenizer = plain_tokenizer(directory)
    tokenizer.enable_padding(pad_id=config["pad_id"], pad_token=config["pad_token"])
    if config.get("max_seq_length"):
        tokenizer.enable_truncation(config["max_seq_length"])
    return tokenizer


def padded_batch(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """The graph's inputs for ``texts``: ids and attention mask, padded to the longest."""
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


class OnnxStudent:
    """The subset of SentenceTransformer that ``api.Embedder`` uses (``encode``, ``tokenizer``,
    ``max_seq_length``), over one exported graph."""

    def __init__(self, directory: str | Path, variant: str = "onnx_fp32", threads: int | None = None):
        import onnxruntime as ort

        directory = Path(directory)
        config = read_config(directory)
        graphs = config["variants"]
        if variant not in graphs:
            raise UserError(f"{directory}: no {variant} graph here; it holds {', '.join(graphs) or 'none'}")
        self.variant = variant
        self.max_seq_length = config.get("max_seq_length")
        self.dimension = config["dimension"]
        self.tokenizer = OffsetTokenizer(plain_tokenizer(directory))
        self.serving = serving_tokenizer(directory, config)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(directory / graphs[variant]), options, providers=["CPUExecutionProvider"]
        )

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def encode(
        self, sentences: list[str], batch_size: int = 32, normalize_embeddings: bool = False, **_: Any
    ) -> np.ndarray:
        """Vectors for ``sentences`` in order, as ``SentenceTransformer.encode(..., convert_to_numpy=True)``.

        Batches are formed longest first, as sentence-transformers does, so a batch pads to a length close to its
        texts' own rather than to the longest of a random few."""
        order = sorted(range(len(sentences)), key=lambda index: -len(sentences[index]))
        vectors = np.empty((len(sentences), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors[rows] = self.session.run(None, padded_batch(self.serving, [sentences[i] for i in rows]))[0]
        if normalize_embeddings:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
