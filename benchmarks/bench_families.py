"""The model families side by side after equal training time: STS-B validation Spearman and encoding speed.

Prepares the data once in ``--workdir`` (download from EMBEDFORGE_MIRROR, validate,
precompute, tokenize), then trains every family with the same ``train.max_minutes``
(epochs and patience high, so the clock is the limit, and so the learning rate
is flat after a short warm-up) on the same data and
objective (cosine distillation to the teacher; the causal LM trains on next-token
prediction instead, which is what it is). Every student and the teacher are then
scored on STS-B validation and timed encoding the same sentences in interleaved
rounds, in this one process. The params are the benchmark's own (the development
preset plus the recipe below), whatever the project's params.yaml says.

    EMBEDFORGE_MIRROR=../shared/data .venv/bin/python benchmarks/bench_families.py --minutes 4

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from common import add_set_argument, pinned_params

COMMON = [
    "preset=development",
    "tracking.enabled=false",
    "precompute.teacher=packaged:all-MiniLM-L6-v2",
    "model.num_layers=2",
    "model.teacher_layers=[0, 5]",
    "train.datasets=[snli, stsb, sick]",
    "train.objectives={infonce: 0.0, distill: 1.0}",
    "train.distill_loss=cosine",
    "train.lr=1e-4",
    "train.batch_size=128",
    "train.epochs=1000",
    "train.early_stopping.patience=1000",
    "train.warmup_ratio=0.0005",  # of 1000 epochs' steps: about half an epoch, then a flat rate (the clock ends it)
]
EPOCH_COLUMNS = [  # what each family's epochs show in the output, where it has them
    "epoch",
    "phase",
    "val.sts_spearman",
    "val.similarity",
    "val.perplexity",
    "dims",
    "sparsity",
    "sparsity_in_band",
    "batch_size",
]
FAMILIES = {
    "encoder": [],
    "lattice": ["model.kind=lattice", "train.lr=1e-3"],  # its rules start random: a faster rate than fine-tuning
    "dynamic": ["model.kind=dynamic"],
    "static": ["model.kind=static", "model.init=teacher_tokens", "train.lr=0.02"],  # a table: a lookup's learning rate
    "encoder_staged": [
        "train.schedule=staged",
        "train.staged.foundation={data_fraction: 0.1, epochs: 6, balanced: false}",
        "train.staged.consolidation={data_fraction: 0.5, epochs: 3, balanced: true}",
        "train.staged.mastery={data_fraction: 1.0, epochs: 1000, balanced: false}",
    ],
    "encoder_clm": ["train.objective=clm", "train.early_stopping.monitor=val_loss"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="training time of every family")
    parser.add_argument("--limit", type=int, default=5000, help="download.limit: rows per split")
    parser.add_argument("--workdir", type=Path, default=Path("bench-families"))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--rounds", type=int, default=3)
    add_set_argument(parser)
    args = parser.parse_args()

    import pandas as pd
    import torch

    from embedforge.api import load_sentence_transformer
    from embedforge.evaluation.speed import encode_speed
    from embedforge.evaluation.sts import STSEvaluator
    from embedforge.models import count_parameters
    from embedforge.models import teacher as teachers
    from embedforge.stages import STAGES

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    common = [*COMMON, f"download.limit={args.limit}", f"train.max_minutes={args.minutes}"]

    def params(*overrides: str):
        return pinned_params(workdir, [*common, *overrides, *args.set])

    for stage in ("download", "validate", "precompute", "tokenize"):
        STAGES[stage].module().run(params())
    trained = {}
    for family in args.families:
        results = STAGES["train"].module().run(params(*FAMILIES[family]))
        destination = Path("students") / family
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree("models/student", destination)
        epochs = pd.read_csv("plots/train/epochs.csv")
        logged = epochs[[c for c in EPOCH_COLUMNS if c in epochs]].round(4)
        results["epoch_log"] = [  # an epoch cut short by the clock has no growth columns: left out, not NaN
            {key: value for key, value in row.items() if pd.notna(value)} for row in logged.to_dict("records")
        ]
        trained[family] = results

    evaluate = STSEvaluator(Path("data/raw/stsb/validation.parquet"), batch_size=64)
    models = {"teacher": load_sentence_transformer(teachers.resolve(params().precompute.teacher).path)}
    models.update({family: load_sentence_transformer(Path("students") / family) for family in trained})
    speeds = encode_speed(models, evaluate.first + evaluate.second, 64, args.rounds)
    report: dict = {
        "benchmark": "model_families_equal_time",
        "training_minutes": args.minutes,
        "download_limit": args.limit,
        "sts_split": evaluate.name,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name, model in models.items():
        entry = {
            "sts_spearman": round(evaluate(model).spearman, 4),
            "sentences_per_s": round(speeds[name].sentences_per_s, 1),
            "speed_ratio_vs_teacher": round(speeds[name].sentences_per_s / speeds["teacher"].sentences_per_s, 2),
            "parameters": count_parameters(model),
            "embedding_dim": model.get_embedding_dimension(),
        }
        if name in trained:
            results = trained[name]
            entry.update(
                {
                    key: round(results[f"result.{key}"], 4)
                    if isinstance(results.get(f"result.{key}"), float)
                    else results.get(f"result.{key}")
                    for key in ("epochs", "steps", "train_seconds", "examples_per_s", "sts_spearman", "perplexity")
                    if f"result.{key}" in results
                }
            )
            entry["epoch_log"] = results["epoch_log"]
        report[name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
