"""Scaling out: each stage on one worker and on several, side by side on the same data; prints JSON.

    EMBEDFORGE_MIRROR=../shared/data python benchmarks/bench_distributed.py [--sentences 4000]

precompute: the premises and hypotheses of the first ``--sentences / 2`` SNLI train
rows, precompute'd from an empty cache once in this process (``precompute.workers: 1``)
and once on a LocalCluster of two Dask worker processes (``precompute.workers: 2``),
about 16 shards either way so both workers have work. Each is timed end to end, as a
user waits for it: teacher load and, for Dask, the cluster's start included (the teacher's
ONNX export is made before either, untimed). The params are the benchmark's own
(development preset, packaged MiniLM teacher, float16 cache, the CPU's auto backend),
whatever the project's params.yaml says; ``--set`` lays overrides over them (e.g. a small
teacher for a smoke run).

train: the development preset's student (the teacher's layers 0 and 5, 384 wide) on
``--pairs`` SNLI pairs with InfoNCE, ``--steps`` steps of a global batch of ``--batch``,
as ``embedforge train`` in a fresh process with ``train.nproc_per_node`` 1 and then 2
(gloo on the CPU, the cores shared out between the processes). Samples/s is the
trainer's own (examples over training seconds, the whole world's); the wall seconds
include start-up, and for two processes the launch. Each section is one key of the
printed object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_precompute import prepare_project
from common import add_set_argument, pinned_params, snli_infonce_settings, train_in_fresh_process

from embedforge import devices
from embedforge.config import MIRROR_ENV, Params
from embedforge.models import teacher as teachers
from embedforge.paths import EMBEDDINGS_DIR
from embedforge.stages import precompute, tokenize

SHARDS = 16  # about this many shards, so that two workers share the work evenly


def precompute_settings(mirror: str, sentences: int, overrides: list[str]) -> list[str]:
    """What is measured: the teacher over ``sentences`` SNLI train sentences, in about ``SHARDS`` shards."""
    return [
        "preset=development",
        "tracking.enabled=false",
        "download.source=mirror",
        f"download.mirror={mirror}",
        f"download.limit={max(1, sentences // 2)}",
        "precompute.teacher=packaged:all-MiniLM-L6-v2",
        "precompute.datasets=[snli]",
        "precompute.splits=[train]",
        f"precompute.shard_size={max(1, sentences // SHARDS)}",
        "precompute.dtype=float16",
        "precompute.backend=auto",
        *overrides,
    ]


def load_teacher_once(cfg: Params) -> None:
    """Load the teacher untimed, so that its ONNX export (made once per teacher) is in neither timing."""
    params = cfg.precompute
    device = devices.pick(params.device, "precompute.device")
    backend = teachers.pick_backend(params.backend, device)
    teachers.load(teachers.resolve(params.teacher), device, params.precision, backend)


def timed_precompute(directory: Path, settings: list[str]) -> tuple[dict, float]:
    """precompute from an empty cache on ``settings``: its results and its wall-clock seconds."""
    shutil.rmtree(EMBEDDINGS_DIR, ignore_errors=True)
    cfg = pinned_params(directory, settings)
    started = time.perf_counter()
    results = precompute.run(cfg)
    return results, time.perf_counter() - started


def precompute_figures(sentences: int, overrides: list[str] | None = None) -> dict:
    """Sentences per second of precompute on 1 worker (in-process) and on 2 Dask workers, and their ratio."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        raise SystemExit(f"set {MIRROR_ENV} to the dataset mirror, e.g. {MIRROR_ENV}=../shared/data")
    mirror = os.environ[MIRROR_ENV] = str(Path(mirror).resolve())  # every load_params applies it, from any directory
    settings = precompute_settings(mirror, sentences, overrides or [])
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["XDG_CACHE_HOME"] = str(Path(scratch) / "cache")  # the ONNX export, shared by the Dask workers
        try:
            cfg = prepare_project(Path(scratch), settings)
            load_teacher_once(cfg)
            one, one_seconds = timed_precompute(Path(scratch), [*settings, "precompute.workers=1"])
            two, two_seconds = timed_precompute(Path(scratch), [*settings, "precompute.workers=2"])
        finally:
            os.chdir(previous)
    return {
        "sentences": one["precompute.sentences"],
        "shards": one["precompute.shards"],
        "teacher": one["teacher.name"],
        "backend": one["precompute.backend_used"],
        "workers_1_sentences_per_s": one["precompute.sentences"] / one_seconds,
        "workers_2_sentences_per_s": two["precompute.sentences"] / two_seconds,
        "speedup": one_seconds / two_seconds,
        "cpu_count": os.cpu_count(),
    }


def train_figures(pairs: int, steps: int, batch: int, overrides: list[str] | None = None) -> dict:
    """Samples per second of training in 1 process and in 2 at the same global batch, and their ratio."""
    mirror = os.environ[MIRROR_ENV] = str(Path(os.environ[MIRROR_ENV]).resolve())
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            cfg = prepare_project(
                Path(scratch), snli_infonce_settings("development", mirror, pairs, steps, batch, overrides or [])
            )
            tokenize.run(cfg)
            runs = {
                processes: train_in_fresh_process(Path(scratch), [f"train.nproc_per_node={processes}"])
                for processes in (1, 2)
            }
        finally:
            os.chdir(previous)
    figures = {
        f"processes_{processes}_{name}": value
        for processes, (printed, seconds) in runs.items()
        for name, value in (("samples_per_s", float(printed["result.examples_per_s"])), ("wall_seconds", seconds))
    }
    return {
        "global_batch": batch,
        "steps": int(float(runs[1][0]["result.steps"])),
        "snli_rows": pairs,
        **figures,
        "speedup": figures["processes_2_samples_per_s"] / figures["processes_1_samples_per_s"],
        "cpu_count": os.cpu_count(),
    }


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "precompute": lambda args: precompute_figures(args.sentences, args.set),
    "train": lambda args: train_figures(args.pairs, args.steps, args.batch, args.set),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=4000, help="input sentences of the precompute section")
    parser.add_argument("--pairs", type=int, default=8000, help="SNLI rows the train section downloads")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each train run")
    parser.add_argument("--batch", type=int, default=64, help="the global batch of the train section")
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS), help="what to measure (default: all)"
    )
    add_set_argument(parser)
    args = parser.parse_args()
    if not os.environ.get(MIRROR_ENV):
        sys.exit(f"set {MIRROR_ENV} to the dataset mirror, e.g. {MIRROR_ENV}=../shared/data")
    report = {"benchmark": "distributed", **{name: SECTIONS[name](args) for name in args.sections}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
