"""The static student against its anchors, measured side by side in this one process on the same sentences:
the teacher, our static student after ``model.init: teacher_tokens`` alone, the same student after training,
and model2vec's distillation of the same teacher at the same dimension.

Prepares the data in ``--workdir`` (download from EMBEDFORGE_MIRROR, validate, precompute with the teacher,
tokenize), trains ``model.kind: static`` with cosine distillation onto the teacher's vectors of every training
sentence (early stopping on the validation splits' distillation loss, not on an STS split), and distils the
teacher with model2vec in its own virtual environment (model2vec 0.10's distill extra pins transformers<5.4,
which this stack cannot take; it runs installed with --no-deps beside skeletoken, and the product never
imports it). Every model is then scored on STS-B validation and SICK validation and timed encoding the same
sentences in interleaved rounds.

    EMBEDFORGE_MIRROR=../shared/data .venv/bin/python benchmarks/bench_static.py

prints one JSON object. ``--wheels DIR`` installs model2vec from local wheels; ``--skip-model2vec`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

from common import add_set_argument, pinned_params

MODEL2VEC = ["model2vec==0.10.0", "skeletoken"]
DISTILL_SCRIPT = """
import sys, time
from model2vec.distill import distill
start = time.perf_counter()
model = distill(model_name=sys.argv[1], pca_dims=int(sys.argv[2]))
seconds = time.perf_counter() - start
model.save_pretrained(sys.argv[3])
print(seconds)
"""


def recipe(dim: int, epochs: int, lr: float) -> list[str]:
    return [
        "tracking.enabled=false",
        "precompute.teacher=packaged:all-MiniLM-L6-v2",
        "train.datasets=[snli, stsb, sick]",
        "model.kind=static",
        "model.init=teacher_tokens",
        f"model.static.dim={dim}",
        "train.objectives={infonce: 0.0, distill: 1.0}",
        "train.distill_loss=cosine",
        f"train.lr={lr}",
        "train.batch_size=256",
        f"train.epochs={epochs}",
        "train.early_stopping.monitor=val_loss",
    ]


def bytes_on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def model2vec_python(workdir: Path, wheels: Path | None) -> Path:
    """A virtual environment seeing this one's packages (a .pth file naming this environment's site-packages,
    after its own), with model2vec and skeletoken added to it alone, without their pins."""
    environment = workdir / "model2vec-venv"
    python = environment / "bin" / "python"
    if not python.exists():
        venv.create(environment, with_pip=True)
        own = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(own, "embedforge-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        source = ["--no-index", "--find-links", str(wheels)] if wheels else []
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", *source, *MODEL2VEC], check=True)
    return python


def distill_with_model2vec(python: Path, teacher: Path, dim: int, destination: Path) -> float:
    """model2vec's distillation of ``teacher`` at ``dim``, saved to ``destination``; the seconds it took."""
    shutil.rmtree(destination, ignore_errors=True)
    done = subprocess.run(
        [python, "-c", DISTILL_SCRIPT, str(teacher), str(dim), str(destination)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        raise SystemExit(f"model2vec distill failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def load_model2vec(directory: Path):
    """model2vec's saved model as a SentenceTransformer (its own StaticEmbedding reads model2vec's files)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    return SentenceTransformer(modules=[StaticEmbedding.load(str(directory)), Normalize()], device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--limit", type=int, default=None, help="download.limit: rows per split (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-static"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wheels", type=Path, default=None, help="a folder of model2vec and skeletoken wheels")
    parser.add_argument("--skip-model2vec", action="store_true")
    add_set_argument(parser)
    args = parser.parse_args()

    import torch

    from embedforge.api import load_sentence_transformer
    from embedforge.evaluation.speed import encode_speed
    from embedforge.evaluation.sts import STSEvaluator
    from embedforge.models import teacher as teachers
    from embedforge.models.static import build_student, save_student
    from embedforge.paths import STUDENT_DIR, TOKENIZER_DIR
    from embedforge.stages import STAGES

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    limit = [f"download.limit={args.limit}"] if args.limit else []
    cfg = pinned_params(workdir, [*recipe(args.dim, args.epochs, args.lr), *limit, *args.set])
    teacher_path = teachers.resolve(cfg.precompute.teacher).path

    stage_seconds = {}
    for stage in ("download", "validate", "precompute", "tokenize"):
        start = time.perf_counter()
        STAGES[stage].module().run(cfg)
        stage_seconds[stage] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    initial = build_student(cfg.model, TOKENIZER_DIR, cfg.tokenize.max_length, teacher_path, cfg.seed)
    init_seconds = time.perf_counter() - start
    shutil.rmtree("students/static_init", ignore_errors=True)
    save_student(initial, Path("students/static_init"))  # as the train stage saves: a float16 table
    trained = STAGES["train"].module().run(cfg)
    shutil.rmtree("students/static_trained", ignore_errors=True)
    shutil.copytree(STUDENT_DIR, "students/static_trained")

    models = {
        "teacher": load_sentence_transformer(teacher_path),
        "static_init": load_sentence_transformer(Path("students/static_init")),
        "static_trained": load_sentence_transformer(Path("students/static_trained")),
    }
    folders = {name: Path("students") / name for name in ("static_init", "static_trained")}
    folders["teacher"] = teacher_path
    distill_seconds = None
    if not args.skip_model2vec:
        python = model2vec_python(workdir, args.wheels)
        distill_seconds = distill_with_model2vec(python, teacher_path, args.dim, workdir / "students/model2vec")
        models["model2vec"] = load_model2vec(workdir / "students/model2vec")
        folders["model2vec"] = workdir / "students/model2vec"

    evaluators = {
        split: STSEvaluator(Path(f"data/raw/{split}.parquet"), batch_size=64)
        for split in ("stsb/validation", "sick/validation")
    }
    texts = list(dict.fromkeys(s for e in evaluators.values() for s in (*e.first, *e.second)))
    speeds = encode_speed(models, texts, 64, args.rounds)
    report: dict = {
        "benchmark": "static_student",
        "dim": args.dim,
        "speed_sentences": len(texts),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": stage_seconds,
        "teacher_tokens_init_seconds": round(init_seconds, 1),
        "model2vec_distill_seconds": None if distill_seconds is None else round(distill_seconds, 1),
        "train": {
            key.removeprefix("result."): trained[key]
            for key in ("result.epochs", "result.steps", "result.train_seconds", "result.best_epoch")
            if key in trained
        },
    }
    for name, model in models.items():
        report[name] = {
            **{f"{split}.spearman": round(evaluator(model).spearman, 4) for split, evaluator in evaluators.items()},
            "sentences_per_s": round(speeds[name].sentences_per_s, 1),
            "speed_ratio_vs_teacher": round(speeds[name].sentences_per_s / speeds["teacher"].sentences_per_s, 1),
            "bytes_on_disk": bytes_on_disk(folders[name]),
            "embedding_dim": model.get_embedding_dimension(),
        }
    for split in evaluators:
        key = f"{split}.spearman"
        for anchor in ("static_init", "model2vec"):
            if anchor in report:
                report[f"trained_minus_{anchor}.{split}"] = round(
                    report["static_trained"][key] - report[anchor][key], 4
                )
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
