"""Training speed: our train stage vs sentence-transformers' SentenceTransformerTrainer, like for like.

Both train the same student (the teacher's layers ``--teacher-layers``, so the same
initial weights) on the same SNLI entailment pairs, with the same batch size,
learning rate, warm-up, cosine decay, weight decay, clipping, InfoNCE loss (MNRL,
scale 20 = temperature 0.05) and number of steps, on the CPU, in this one process.
The trainer uses its no-duplicates batch sampler; ours its length-bucketed batches
from the pre-tokenized data. Each model is then scored on STS-B validation with
the same evaluator. The machine's dense fp32 matmul rate is measured in the same
run, to say how much of the hardware our training uses. Our stage's params are the
benchmark's own (the development preset plus the knobs above), whatever the
project's params.yaml says.

    EMBEDFORGE_MIRROR=../shared/data .venv/bin/python benchmarks/bench_train.py

prints one JSON object. Throughput excludes model loading and evaluation for both;
our tokenize stage runs beforehand (its time is reported separately), the trainer
tokenizes inside its loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import add_set_argument, pinned_params


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Dense fp32 matmul rate of this machine with torch's threads: the ceiling for training FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def training_flops_per_token(model: torch.nn.Module, mean_length: float) -> float:
    """6 x the non-embedding parameters (forward 2, backward 4), plus attention's scores and mixing."""
    backbone = model[0].auto_model
    config = backbone.config
    dense = sum(p.numel() for p in backbone.parameters()) - sum(p.numel() for p in backbone.embeddings.parameters())
    attention = 2 * 2 * config.num_hidden_layers * mean_length * config.hidden_size
    return 3 * (2 * dense + attention)


def pair_texts(examples, store, raw_path: Path) -> tuple[list[str], list[str]]:
    from embedforge.training.examples import text_ids

    frame = pd.read_parquet(raw_path, columns=["sentence1", "sentence2"])
    texts = dict(zip(text_ids(frame["sentence1"]), frame["sentence1"], strict=True))
    texts.update(zip(text_ids(frame["sentence2"]), frame["sentence2"], strict=True))
    return [texts[i] for i in store.ids(examples.anchors)], [texts[i] for i in store.ids(examples.positives)]


def train_with_sentence_transformers(model_dir: Path, anchors, positives, args, workdir: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    model = SentenceTransformer(str(model_dir), device="cpu")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "st-trainer"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_steps=args.steps,
        warmup_ratio=0.1,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=args.seed,
        save_strategy="no",
        logging_steps=args.steps,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}),
        loss=MultipleNegativesRankingLoss(model, scale=1 / 0.05),
    )
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is for the JSON
        output = trainer.train()
    return {"model": model, "seconds": output.metrics["train_runtime"], "samples": args.steps * args.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snli-rows", type=int, default=12_000, help="SNLI train rows (about a third are pairs)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--teacher-layers", default="0,3,5")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, help="data and models (default: a new temporary directory)")
    add_set_argument(parser)
    parser.add_argument("--skip-trainer", action="store_true", help="time only our stage (for profiling)")
    args = parser.parse_args()
    mirror = os.environ.get("EMBEDFORGE_MIRROR")
    if not mirror:
        sys.exit("set EMBEDFORGE_MIRROR to the local dataset mirror, e.g. ../shared/data")

    from sentence_transformers import SentenceTransformer

    from embedforge.evaluation.sts import STSEvaluator
    from embedforge.models import teacher as teachers
    from embedforge.models.encoder import build_encoder
    from embedforge.paths import RAW_DIR, TOKENS_DIR
    from embedforge.stages import download, tokenize, train, validate
    from embedforge.training.examples import pair_examples
    from embedforge.training.token_files import TokenStore

    layers = [int(i) for i in args.teacher_layers.split(",")]
    mirror = Path(mirror).resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    cfg = pinned_params(
        workdir,
        [
            "preset=development",
            "tracking.enabled=false",
            "download.source=mirror",
            f"download.mirror={mirror}",
            f"download.limit={args.snli_rows}",
            "precompute.teacher=packaged:all-MiniLM-L6-v2",
            "tokenize.datasets=[snli, stsb]",
            "model.init=teacher_layers",
            f"model.num_layers={len(layers)}",
            f"model.teacher_layers={layers}",
            "train.objectives={infonce: 1.0, distill: 0.0}",  # MNRL's loss: what the trainer is given too
            "train.temperature=0.05",
            "train.datasets=[snli]",
            "train.hard_negatives=false",
            f"train.batch_size={args.batch_size}",
            f"train.lr={args.lr}",
            f"train.max_steps={args.steps}",
            "train.epochs=1000",
            "train.warmup_ratio=0.1",
            "train.lr_floor=0.0",
            "train.weight_decay=0.01",
            "train.max_grad_norm=1.0",
            f"seed={args.seed}",
            *args.set,
        ],
    )
    for stage in (download, validate):
        stage.run(cfg)
    started = time.perf_counter()
    tokenize.run(cfg)
    tokenize_seconds = time.perf_counter() - started

    snli = RAW_DIR / "snli/train.parquet"
    store = TokenStore.load(TOKENS_DIR, [snli])
    examples = pair_examples(snli, labelled=True, min_score=cfg.train.similar_min_score, store=store)
    anchors, positives = pair_texts(examples, store, snli)
    initial = build_encoder(
        cfg.model,
        Path("data/tokens/tokenizer"),
        cfg.tokenize.max_length,
        teachers.resolve(cfg.precompute.teacher).path,
        cfg.seed,
    )
    initial.save(str(workdir / "initial"))
    evaluate = STSEvaluator(RAW_DIR / "stsb/validation.parquet")
    peak = matmul_gflops()

    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "matmul_fp32_gflops": round(peak, 1),
        },
        "setup": {
            "pairs": len(examples),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "student_layers": layers,
            "initial_sts_spearman": round(evaluate(initial).spearman, 4),
        },
    }

    if not args.skip_trainer:
        torch.manual_seed(args.seed)
        theirs = train_with_sentence_transformers(workdir / "initial", anchors, positives, args, workdir)
        mean_pair_tokens = float(
            np.mean([len(t) for t in initial.tokenizer(anchors)["input_ids"]])
            + np.mean([len(t) for t in initial.tokenizer(positives)["input_ids"]])
        )
        report["sentence_transformers_trainer"] = {
            "samples_per_s": round(theirs["samples"] / theirs["seconds"], 2),
            "tokens_per_s": round(theirs["samples"] * mean_pair_tokens / theirs["seconds"], 1),
            "train_seconds": round(theirs["seconds"], 2),
            "sts_spearman": round(evaluate(theirs["model"]).spearman, 4),
        }

    results = train.run(cfg)
    ours = SentenceTransformer("models/student", device="cpu")
    tokens_per_s = results["result.tokens_per_s"]
    mean_length = tokens_per_s / results["result.examples_per_s"] / 2
    achieved = tokens_per_s * training_flops_per_token(ours, mean_length) / 1e9
    report["embedforge"] = {
        "samples_per_s": round(results["result.examples_per_s"], 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "train_seconds": round(results["result.train_seconds"], 2),
        "sts_spearman": round(evaluate(ours).spearman, 4),
        "time_breakdown_pct": {
            phase: round(results[f"result.time.{phase}_pct"], 1)
            for phase in ("data", "forward", "loss", "backward", "optimizer")
        },
        "training_gflops": round(achieved, 1),
        "matmul_fraction": round(achieved / peak, 3),
        "tokenize_stage_seconds": round(tokenize_seconds, 2),
    }
    if "sentence_transformers_trainer" in report:
        theirs_report = report["sentence_transformers_trainer"]
        speedup = report["embedforge"]["samples_per_s"] / theirs_report["samples_per_s"]
        delta = report["embedforge"]["sts_spearman"] - theirs_report["sts_spearman"]
        report["speedup_samples_per_s"] = round(speedup, 2)
        report["sts_spearman_delta"] = round(delta, 4)
        report["targets_met"] = {
            "speedup >= 3.0": speedup >= 3.0,
            "spearman >= trainer - 0.005": delta >= -0.005,
            "matmul_fraction >= 0.6": achieved / peak >= 0.6,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
