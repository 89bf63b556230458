"""export: the student in the formats teams serve, each checked against the PyTorch student, and its model card.

Reads ``models/student``, ``metrics/eval.json`` and ``metrics/train.json``, and the STS splits
evaluate scored. Writes, all at once (a kill leaves the previous export whole):

- ``models/export/``: ``model.onnx`` (fp32) and ``model_int8.onnx`` (weights in int8, ONNX Runtime's dynamic
  quantization), the student's ``tokenizer.json``, ``onnx.json`` (what ``load_model(path, backend="onnx")``
  reads) and ``README.md``, the model card;
- ``metrics/export.json``: per variant, its cosine with the PyTorch student on every STS sentence, its STS
  Spearman, its speed timed in interleaved rounds beside the PyTorch student, and so its speed against the
  teacher (times the student's, from eval.json).

A family whose student does not trace to ONNX is not exported: export.json and the card say why in one line,
and the stage still writes the card.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedforge.api import load_sentence_transformer
from embedforge.config import Params, flatten
from embedforge.errors import UserError
from embedforge.evaluation.speed import encode_speed
from embedforge.evaluation.sts import cosine_scores, read_split, sts_correlation
from embedforge.families import family as family_of
from embedforge.files import atomic_dir, read_object, write_json
from embedforge.models import padding_id
from embedforge.models.onnx_export import CHECK_SENTENCES, export_onnx, quantize_int8
from embedforge.models.onnx_student import EXPORT_CONFIG, TOKENIZER_FILE, OnnxStudent, padded_batch, serving_tokenizer
from embedforge.paths import EVAL_METRICS_PATH, EXPORT_DIR, EXPORT_METRICS_PATH, STUDENT_DIR, TRAIN_METRICS_PATH
from embedforge.report.card import card_lineage, model_card

log = logging.getLogger(__name__)

GRAPH_FILES = {"onnx_fp32": "model.onnx", "onnx_int8": "model_int8.onnx"}
CARD_FILE = "README.md"


def backend_tokenizer(model: Any) -> Any:
    """The ``tokenizers.Tokenizer`` under the student's tokenizer (a static student's is one already)."""
    return getattr(model.tokenizer, "backend_tokenizer", model.tokenizer)


def write_graphs(model: Any, directory: Path, variants: list[str], inputs: Any) -> None:
    """The tokenizer, the fp32 graph (always: int8 is quantized from it) and ``onnx.json``."""
    tokenizer = backend_tokenizer(model)
    pad_id = padding_id(model)
    limit = model.max_seq_length  # a static student reads any length: no int, no limit
    tokenizer.save(str(directory / TOKENIZER_FILE))
    config = {
        "variants": {name: GRAPH_FILES[name] for name in variants},
        "dimension": model.get_embedding_dimension(),
        "max_seq_length": limit if isinstance(limit, int) else None,
        "pad_id": pad_id,
        "pad_token": tokenizer.id_to_token(pad_id),
    }
    (directory / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    example = padded_batch(serving_tokenizer(directory, config), CHECK_SENTENCES)
    fp32 = directory / GRAPH_FILES["onnx_fp32"]
    export_onnx(model, inputs, {name: torch.from_numpy(value) for name, value in example.items()}, fp32)
    if "onnx_int8" in variants:
        quantize_int8(fp32, directory / GRAPH_FILES["onnx_int8"])
    if "onnx_fp32" not in variants:
        fp32.unlink()


def not_exportable(model: Any, directory: Path, cfg: Params) -> str | None:
    """Export the student into ``directory``; None when it worked, else the one-line reason it cannot."""
    family = family_of(cfg.model.kind)
    try:
        write_graphs(model, directory, cfg.export.variants, family.model_inputs(model))
    except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"model.kind {cfg.model.kind} does not export to ONNX: {first_line}"
    return None


class CheckSentences:
    """The STS splits evaluate scored, and every distinct sentence in them: what each variant is checked on (the
    separation splits' sentences where no STS split is scored)."""

    def __init__(self, specs: list[str], separation_specs: list[str]):
        self.frames = {spec: read_split(spec, "evaluate.sts_splits") for spec in specs}
        checked = self.frames.values() or [read_split(spec, "evaluate.separation_splits") for spec in separation_specs]
        texts = [text for frame in checked for column in ("sentence1", "sentence2") for text in frame[column]]
        self.texts = list(dict.fromkeys(texts))
        self.row = {text: index for index, text in enumerate(self.texts)}

    def spearman(self, vectors: np.ndarray) -> dict[str, dict[str, float | None]]:
        scores = {}
        for spec, frame in self.frames.items():
            first, second = (
                vectors[[self.row[text] for text in frame[column]]] for column in ("sentence1", "sentence2")
            )
            result = sts_correlation(cosine_scores(first, second), frame["score"].to_numpy(dtype=np.float64), spec)
            scores[spec] = {"spearman": result.spearman}
        return scores


def score_variants(student: Any, directory: Path, cfg: Params, evaluation: dict[str, Any]) -> dict[str, Any]:
    """export.json: each variant beside the PyTorch student: cosine with it, STS Spearman, size, and speed timed in
    interleaved rounds with it. Its speed against the teacher chains two ratios each measured side by side, the
    variant's to the PyTorch student's here and the student's to the teacher's in evaluate, so the variants sit on
    the frontier where the student's own measurement puts them."""
    evaluate = cfg.evaluate
    sentences = CheckSentences(evaluate.sts_splits, evaluate.separation_splits)
    variants = {name: OnnxStudent(directory, name) for name in cfg.export.variants}
    reference = student.encode(sentences.texts, batch_size=evaluate.batch_size, convert_to_numpy=True)
    speed_texts = sentences.texts[: evaluate.speed_sentences]
    timed = encode_speed({"pytorch": student, **variants}, speed_texts, evaluate.batch_size, evaluate.speed_rounds)
    speeds = {name: speed.sentences_per_s for name, speed in timed.items()}
    figures: dict[str, Any] = {}
    for name, variant in variants.items():
        vectors = variant.encode(sentences.texts, batch_size=evaluate.batch_size)
        cosine = cosine_scores(vectors, reference)
        figures[name] = {
            "file": GRAPH_FILES[name],
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "sts": sentences.spearman(vectors),
            "sentences_per_s": speeds[name],
            "speed_vs_pytorch": speeds[name] / speeds["pytorch"],
            "speed_ratio": speeds[name] / speeds["pytorch"] * evaluation["speed_ratio"],
            "disk_bytes": (directory / GRAPH_FILES[name]).stat().st_size,
        }
    pytorch = {"sts": sentences.spearman(reference), "sentences_per_s": speeds["pytorch"]}
    return {
        "variants": figures,
        "pytorch": pytorch,
        "sentences": len(sentences.texts),
        "speed_sentences": len(speed_texts),
    }


def refuse_disagreement(exports: dict[str, Any], cfg: Params) -> None:
    fp32 = exports["variants"].get("onnx_fp32")
    if fp32 is not None and fp32["cosine_min"] < cfg.export.min_cosine:
        raise UserError(
            f"export: the ONNX graph disagrees with the PyTorch student (lowest cosine {fp32['cosine_min']:.6f} over "
            f"{exports['sentences']} evaluation sentences, export.min_cosine {cfg.export.min_cosine}); "
            "nothing was written"
        )


def run(cfg: Params) -> dict[str, float | str]:
    evaluation = read_object(EVAL_METRICS_PATH, "embedforge evaluate", ("verdict",))
    training = read_object(TRAIN_METRICS_PATH, "embedforge train")
    student = load_sentence_transformer(STUDENT_DIR, "cpu").eval()  # as evaluate scored it: the reference
    with atomic_dir(EXPORT_DIR) as directory:
        traced = load_sentence_transformer(STUDENT_DIR, "cpu").eval()  # a copy: tracing switches its attention
        reason = not_exportable(traced, directory, cfg)
        if reason is None:
            exports = score_variants(student, directory, cfg, evaluation)
            refuse_disagreement(exports, cfg)
        else:
            log.warning("%s", reason)
            for leftover in directory.iterdir():
                leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
            exports = {"not_exported": reason}
        card = model_card(cfg, evaluation, training, exports, card_lineage(cfg))
        (directory / CARD_FILE).write_text(card, encoding="utf-8")
    write_json(EXPORT_METRICS_PATH, exports)
    results: dict[str, float | str] = {
        f"export.{key}": float(value) for key, value in flatten(exports).items() if isinstance(value, (int, float))
    }
    if reason is not None:
        results["export.not_exported"] = reason
    return results
