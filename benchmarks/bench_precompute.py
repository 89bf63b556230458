"""Precompute vs plain SentenceTransformer.encode, side by side on the same sentences; prints JSON.

    EMBEDFORGE_MIRROR=../shared/data python benchmarks/bench_precompute.py [--batch-size 128]

(a) loads the teacher (all-MiniLM-L6-v2), encodes every premise and hypothesis of
SNLI validation + test as one list and saves it with numpy.save; (b) runs our
precompute stage on the same splits, end to end (teacher load, deduplication,
length bucketing, inference, parquet shards, manifest). Both count input sentences
per second. Then every sentence's cached vector is compared with (a)'s, and the
stage's peak RSS is measured in fresh processes for corpora of about 10k and 50k
sentences. The params are the benchmark's own (development preset, float16 cache,
the CPU's auto backend), whatever the project's params.yaml says.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import PEAK_RSS_MB, add_set_argument, pinned_params

from embedforge import embeddings
from embedforge.config import MIRROR_ENV, Params
from embedforge.models import teacher as teachers
from embedforge.stages import download, precompute, validate

REPO_ROOT = Path(__file__).resolve().parents[1]
MEASURE_PEAK = """
import json, sys
from embedforge.config import load_params
from embedforge.stages import precompute
results = precompute.run(load_params("params.yaml", sys.argv[1:]))
print(json.dumps({"sentences": results["precompute.sentences"], "peak_rss_mb": PEAK}))
""".replace("PEAK", PEAK_RSS_MB)


def measured_settings(mirror: str, args: argparse.Namespace) -> list[str]:
    """What is measured: the teacher's precompute of SNLI validation + test, from ``--limit`` rows per split."""
    return [
        "preset=development",
        "tracking.enabled=false",
        "download.source=mirror",
        f"download.mirror={mirror}",
        f"download.limit={json.dumps(args.limit)}",
        "precompute.teacher=packaged:all-MiniLM-L6-v2",
        "precompute.datasets=[snli]",
        "precompute.splits=[validation, test]",
        f"precompute.batch_size={args.batch_size}",
        "precompute.shard_size=50000",
        "precompute.dtype=float16",
        "precompute.backend=auto",
        *args.set,
    ]


def prepare_project(directory: Path, settings: list[str]) -> Params:
    """params.yaml, data/raw and a passing validation in ``directory``, outside the timed part."""
    os.chdir(directory)
    cfg = pinned_params(directory, settings)
    download.run(cfg)
    validate.run(cfg)
    return cfg


def snli_sentences(splits: list[str]) -> list[str]:
    frames = [pd.read_parquet(f"data/raw/snli/{split}.parquet") for split in splits]
    return [text for frame in frames for text in (*frame["sentence1"], *frame["sentence2"])]


def plain_encode(teacher: str, sentences: list[str], batch_size: int, out: Path) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(teachers.resolve(teacher).path), device="cpu")
    vectors = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True)
    np.save(out, vectors)
    return time.perf_counter() - started, vectors


def peak_rss(limit_per_split: int) -> dict:
    """The stage's peak RSS in a fresh process on the first ``limit_per_split`` rows of every SNLI split."""
    with tempfile.TemporaryDirectory() as scratch:
        subset = Path(scratch) / "data/raw/snli"
        subset.mkdir(parents=True)
        for split in ("train", "validation", "test"):
            pd.read_parquet(f"data/raw/snli/{split}.parquet").head(limit_per_split).to_parquet(
                subset / f"{split}.parquet", index=False
            )
        (Path(scratch) / "data/validation").mkdir()
        (Path(scratch) / "data/validation/results.json").write_text(Path("data/validation/results.json").read_text())
        (Path(scratch) / "params.yaml").write_text(Path("params.yaml").read_text())
        done = subprocess.run(
            [sys.executable, "-c", MEASURE_PEAK, "precompute.splits=[train, validation, test]"],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="download.limit: rows per split (default: all)")
    parser.add_argument(
        "--peak-rows",
        type=int,
        nargs=2,
        default=[1667, 8334],
        metavar=("SMALL", "LARGE"),
        help="SNLI rows per split of the two peak-RSS corpora (default: about 10k and 50k sentences)",
    )
    add_set_argument(parser)
    args = parser.parse_args()
    mirror = os.environ.pop(MIRROR_ENV, None)
    if not mirror:
        sys.exit(f"set {MIRROR_ENV} to the dataset mirror, e.g. {MIRROR_ENV}=../shared/data")
    mirror = str(Path(mirror).resolve())

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["XDG_CACHE_HOME"] = str(Path(scratch) / "cache")  # (b) pays for its ONNX export
        cfg = prepare_project(Path(scratch), measured_settings(mirror, args))
        sentences = snli_sentences(cfg.precompute.splits)

        plain_seconds, plain_vectors = plain_encode(
            cfg.precompute.teacher, sentences, cfg.precompute.batch_size, Path(scratch) / "plain.npy"
        )

        started = time.perf_counter()
        results = precompute.run(cfg)
        ours_seconds = time.perf_counter() - started

        cached = embeddings.load(Path("data/embeddings") / results["teacher.name"]).encode(sentences)
        cosine = (cached * plain_vectors).sum(1) / (
            np.linalg.norm(cached, axis=1) * np.linalg.norm(plain_vectors, axis=1)
        )
        small, large = [peak_rss(rows) for rows in args.peak_rows]
        os.chdir(REPO_ROOT)

    report = {
        "benchmark": "precompute",
        "sentences": len(sentences),
        "unique_sentences": results["precompute.unique_sentences"],
        "batch_size": cfg.precompute.batch_size,
        "teacher": results["teacher.name"],
        "plain_encode_numpy_save": {"seconds": plain_seconds, "sentences_per_s": len(sentences) / plain_seconds},
        "embedforge_precompute": {
            "seconds": ours_seconds,
            "sentences_per_s": len(sentences) / ours_seconds,
            "backend": results["precompute.backend_used"],
        },
        "speedup": plain_seconds / ours_seconds,
        "min_cosine_to_plain": float(cosine.min()),
        "peak_rss_mb": {"small": small, "large": large, "ratio": large["peak_rss_mb"] / small["peak_rss_mb"]},
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
