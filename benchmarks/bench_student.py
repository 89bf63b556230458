"""A trained student against its teacher, in one process: STS Spearman and encoding speed.

Both models are plain SentenceTransformers on the CPU with the PyTorch backend,
encode the same sentences (both sides of the STS split) with the same batch size,
and are timed in interleaved rounds (best round counts), so the speed ratio holds
on a noisy machine even where the absolute figures do not.

    .venv/bin/python benchmarks/bench_student.py --student models/student

prints one JSON object. Run it after ``embedforge train`` (the distill-small preset's
target: Spearman >= 0.85 on STS-B validation at >= 2x the teacher's speed).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=Path("models/student"))
    parser.add_argument("--teacher", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--sts", type=Path, default=Path("data/raw/stsb/validation.parquet"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from embedforge.api import load_sentence_transformer
    from embedforge.evaluation.speed import encode_speed
    from embedforge.evaluation.sts import STSEvaluator
    from embedforge.models import count_parameters
    from embedforge.models import teacher as teachers

    models = {
        "teacher": load_sentence_transformer(teachers.resolve(args.teacher, "--teacher").path),
        "student": load_sentence_transformer(args.student),  # any family: the lattice and dynamic ones too
    }
    evaluate = STSEvaluator(args.sts, batch_size=args.batch_size)
    speeds = encode_speed(models, evaluate.first + evaluate.second, args.batch_size, args.rounds)
    report: dict = {
        "benchmark": "student_vs_teacher",
        "sts_split": evaluate.name,
        "sentences": len(evaluate.first) * 2,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name, model in models.items():
        report[name] = {
            "sts_spearman": round(evaluate(model).spearman, 4),
            "sentences_per_s": round(speeds[name].sentences_per_s, 1),
            "parameters": count_parameters(model),
        }
    ratio = speeds["student"].sentences_per_s / speeds["teacher"].sentences_per_s
    report["speed_ratio"] = round(ratio, 2)
    report["targets_met"] = {
        "student sts_spearman >= 0.85": report["student"]["sts_spearman"] >= 0.85,
        "speed_ratio >= 2.0": ratio >= 2.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
