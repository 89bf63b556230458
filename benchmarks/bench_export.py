"""A trained student against its ONNX exports, in one process: agreement, STS Spearman and encoding speed.

Exports the student as the export stage does (``stages/export.py``: the fp32 graph and its int8 dynamically
quantized twin), then encodes the same sentences (both sides of the STS split) with the PyTorch student and
each graph, the same batch size, in interleaved rounds; the median round counts. Targets (issue: a student
you can ship): fp32 embeddings within cosine 0.9999 of PyTorch; for a transformer student, int8 at least 1.5x
the PyTorch student's sentences per second with STS Spearman within 0.01 of it. A static student's cost is its
tokenizer, so its figures are reported without a speed target.

    .venv/bin/python benchmarks/bench_export.py --student models/student --kind encoder

prints one JSON object. Run it after ``embedforge train`` (``make run`` leaves a student in models/student).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FP32_MIN_COSINE = 0.9999
INT8_MIN_SPEEDUP = 1.5
INT8_MAX_SPEARMAN_DROP = 0.01
NO_SPEED_TARGET = ("static",)  # families whose cost is tokenization, not matmuls


def median_speeds(models: dict, sentences: list[str], batch_size: int, rounds: int) -> dict[str, float]:
    """Sentences per second of each model: one warm-up, then ``rounds`` rounds taking the models in turn, so a busy
    moment of the machine hits each alike; the median round counts."""
    for model in models.values():
        model.encode(sentences[:64], batch_size=batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.encode(sentences, batch_size=batch_size)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(sentences) / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=Path("models/student"))
    parser.add_argument("--kind", default="encoder", help="the student's model.kind (its family exports it)")
    parser.add_argument("--sts", type=Path, default=Path("data/raw/stsb/validation.parquet"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from embedforge.api import load_sentence_transformer
    from embedforge.evaluation.sts import STSEvaluator, cosine_scores
    from embedforge.families import family as family_of
    from embedforge.models.onnx_student import OnnxStudent
    from embedforge.stages.export import GRAPH_FILES, write_graphs

    evaluate = STSEvaluator(args.sts, batch_size=args.batch_size)
    sentences = evaluate.first + evaluate.second
    student = load_sentence_transformer(args.student).eval()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as workdir:
        directory = Path(workdir)
        traced = load_sentence_transformer(args.student).eval()
        write_graphs(traced, directory, list(GRAPH_FILES), family_of(args.kind).model_inputs(traced))
        models = {"pytorch": student, **{name: OnnxStudent(directory, name) for name in GRAPH_FILES}}
        speeds = median_speeds(models, sentences, args.batch_size, args.rounds)
        reference = student.encode(sentences, batch_size=args.batch_size, convert_to_numpy=True)
        report: dict = {
            "benchmark": "export",
            "kind": args.kind,
            "sts_split": evaluate.name,
            "sentences": len(sentences),
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
        for name, model in models.items():
            vectors = reference if name == "pytorch" else model.encode(sentences, batch_size=args.batch_size)
            cosine = cosine_scores(vectors, reference)
            report[name] = {
                "sts_spearman": round(evaluate(model).spearman, 4),
                "sentences_per_s": round(speeds[name], 1),
                "speed_vs_pytorch": round(speeds[name] / speeds["pytorch"], 2),
                "cosine_min": round(float(cosine.min()), 6),
                "cosine_mean": round(float(np.mean(cosine)), 6),
                **({"disk_bytes": (directory / GRAPH_FILES[name]).stat().st_size} if name in GRAPH_FILES else {}),
            }
    report["targets"] = targets(report, args.kind)
    print(json.dumps(report, indent=2))


def targets(report: dict, kind: str) -> dict[str, bool]:
    """The issue's targets, each by name; the speed target only for students whose cost is matmuls."""
    met = {f"onnx_fp32 cosine_min >= {FP32_MIN_COSINE}": report["onnx_fp32"]["cosine_min"] >= FP32_MIN_COSINE}
    drop = abs(report["onnx_int8"]["sts_spearman"] - report["pytorch"]["sts_spearman"])
    met[f"onnx_int8 |spearman - pytorch| <= {INT8_MAX_SPEARMAN_DROP}"] = drop <= INT8_MAX_SPEARMAN_DROP
    if kind not in NO_SPEED_TARGET:
        met[f"onnx_int8 speed_vs_pytorch >= {INT8_MIN_SPEEDUP}"] = (
            report["onnx_int8"]["speed_vs_pytorch"] >= INT8_MIN_SPEEDUP
        )
    return met


if __name__ == "__main__":
    main()
