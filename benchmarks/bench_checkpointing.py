"""Gradient checkpointing: the production preset's student with and without it, under the same memory budget;
prints JSON.

    EMBEDFORGE_MIRROR=../shared/data python benchmarks/bench_checkpointing.py [--memory-mb 1500] [--batch 256]

Both runs train the production preset's student (all six layers of the teacher, 384
wide) on SNLI pairs with InfoNCE (token ids only, so no teacher vectors to
precompute), a global batch of ``--batch``, ``--steps`` steps, as ``embedforge
train`` in a fresh process with ``train.memory_limit_mb: --memory-mb``. The planner
splits the batch into the fewest micro-batches whose estimated step fits the budget,
so each way trains at the largest micro-batch that fits it. Reported for each: that
micro-batch, samples/s (the trainer's own, over training seconds), the backward
pass's share of the time (where the recomputation goes), the planner's estimate and
the process's peak RSS, and what one forward of that micro-batch keeps for backward
(autograd's saved tensors, measured in this process: the memory checkpointing trades
for recomputation, the same on every run where RSS is noisy). Then both ways once more
at one micro-batch of ``--equal-batch`` examples without a budget: the memory
checkpointing saves, and its cost, like for like.
The params are the benchmark's own, whatever the project's
params.yaml says; ``--set`` lays overrides over them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_precompute import prepare_project
from common import add_set_argument, snli_infonce_settings, train_in_fresh_process

from embedforge.config import MIRROR_ENV, Params
from embedforge.families import family
from embedforge.memory import autograd_saved_bytes
from embedforge.models import teacher as teachers
from embedforge.objectives import OBJECTIVES
from embedforge.stages import tokenize
from embedforge.stages.train import build_student

WAYS = ("plain", "checkpointed")


def saved_activations_mb(cfg: Params, examples: int, checkpointed: bool) -> float:
    """MiB autograd keeps for backward after one forward of ``examples`` random sequences of the longest length, on
    the student the train stage builds (checkpointed or not)."""
    import torch

    kind = family(cfg.model.kind)
    model = build_student(cfg, kind, OBJECTIVES[cfg.train.objective], teachers.resolve(cfg.precompute.teacher).path)
    if checkpointed:
        kind.enable_checkpointing(model)
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (examples, cfg.tokenize.max_length)
    features = {
        "input_ids": torch.randint(1000, 20000, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
    }
    return autograd_saved_bytes(model, features) / 2**20


def both_ways(directory: Path, cfg: Params, batch: int, extra: list[str]) -> dict[str, dict[str, float]]:
    """Train without and with gradient checkpointing; each way's micro-batch, speed, time share and memory."""
    report = {}
    for way in WAYS:
        printed, seconds = train_in_fresh_process(directory, [f"train.gradient_checkpointing={way == WAYS[1]}", *extra])
        micro_batches = int(float(printed["result.micro_batches"]))
        report[way] = {
            "micro_batches": micro_batches,
            "micro_batch_examples": -(-batch // micro_batches),
            "samples_per_s": float(printed["result.examples_per_s"]),
            "backward_pct": float(printed["result.time.backward_pct"]),
            "memory_estimate_mb": float(printed["result.memory_estimate_mb"]),
            "peak_rss_mb": float(printed["result.peak_rss_mb"]),
            "saved_activations_mb": saved_activations_mb(cfg, -(-batch // micro_batches), way == WAYS[1]),
            "wall_seconds": seconds,
        }
    return report


def figures(pairs: int, steps: int, batch: int, memory_mb: float, equal_batch: int, overrides: list[str]) -> dict:
    mirror = os.environ[MIRROR_ENV] = str(Path(os.environ[MIRROR_ENV]).resolve())
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            cfg = prepare_project(
                Path(scratch),
                snli_infonce_settings(
                    "production", mirror, pairs, steps, batch, [f"train.memory_limit_mb={memory_mb}", *overrides]
                ),
            )
            tokenize.run(cfg)
            report = both_ways(Path(scratch), cfg, batch, [])
            equal = both_ways(
                Path(scratch), cfg, equal_batch, [f"train.batch_size={equal_batch}", "train.memory_limit_mb=null"]
            )
        finally:
            os.chdir(previous)
    plain, checkpointed = report["plain"], report["checkpointed"]
    return {
        "benchmark": "gradient_checkpointing",
        "preset": "production",
        "global_batch": batch,
        "steps": steps,
        "memory_limit_mb": memory_mb,
        **report,
        "speed_ratio": checkpointed["samples_per_s"] / plain["samples_per_s"],
        "peak_rss_ratio": checkpointed["peak_rss_mb"] / plain["peak_rss_mb"],
        "same_micro_batch": {
            **equal,
            "speed_ratio": equal["checkpointed"]["samples_per_s"] / equal["plain"]["samples_per_s"],
            "peak_rss_ratio": equal["checkpointed"]["peak_rss_mb"] / equal["plain"]["peak_rss_mb"],
            "saved_activations_ratio": equal["checkpointed"]["saved_activations_mb"]
            / equal["plain"]["saved_activations_mb"],
        },
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8000, help="SNLI rows downloaded")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of each run")
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--memory-mb", type=float, default=1500, help="train.memory_limit_mb of both runs")
    parser.add_argument("--equal-batch", type=int, default=64, help="the one micro-batch of the like-for-like runs")
    add_set_argument(parser)
    args = parser.parse_args()
    if not os.environ.get(MIRROR_ENV):
        sys.exit(f"set {MIRROR_ENV} to the dataset mirror, e.g. {MIRROR_ENV}=../shared/data")
    print(json.dumps(figures(args.pairs, args.steps, args.batch, args.memory_mb, args.equal_batch, args.set), indent=2))


if __name__ == "__main__":
    main()
