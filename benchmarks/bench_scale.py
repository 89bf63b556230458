"""Cost growth: seconds, items/s, memory and bytes on disk of every stage from 10 thousand to 10 million sentences.

    EMBEDFORGE_MIRROR=../shared/data python benchmarks/bench_scale.py --max-n 1000000 [--minilm-max-n 100000]

For each N a seeded generator recombines the mirror's SNLI words into N distinct sentences
(a fifth of them repeated once, as corpora repeat), written as parquet files and declared as
an own-data ``sentences`` dataset (``data/external/corpus/*.parquet``), next to the mirror's
STS-B validation pairs as a small ``pairs_score`` set. Then the real stages run, each in a
fresh process so its memory is its own: its peak RSS (``VmHWM``) and, sampled every 20 ms, the
peaks of its anonymous and file-backed pages (``RssAnon``: what it allocated; ``RssFile``: mapped
files, such as memory-mapped teacher vectors). The stages: download, validate (GX), precompute
with a tiny random teacher (1 layer, 64 wide: the stage's own reading, dedup, hashing,
sharding and writing dominate), tokenize, train (data loading, batch planning and 20
distillation steps), and exact retrieval of 1,000 queries over the N cached float16 vectors. The
real MiniLM teacher's precompute runs at the sizes up to ``--minilm-max-n`` to show the
model's share. At the largest N it also times ``dvc commit`` (hashing every output once),
then ``dvc status`` and a no-op ``dvc repro``, and the Prefect flow's cache keys with
nothing changed. Prints one JSON object: items/s ratios compare the largest N with 10k and 100k;
train's and retrieval's anonymous memory gained from the smallest N to the largest is set against
the raw bytes of the data they hold; every figure is carried on to 50 million sentences along the
line through the two largest sizes (``extrapolated``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import PEAK_RSS_MB, add_set_argument, build_tiny_sentence_model, pinned_params

from embedforge.config import MIRROR_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000, 5_000_000, 10_000_000)
EXTRAPOLATE_TO = 50_000_000  # sentences, from the slope between the two largest sizes measured
PART_ROWS = 500_000  # rows per corpus file
REPEATED_SHARE = 0.2  # of the distinct sentences, this share occurs twice
DVC = str(Path(sys.executable).with_name("dvc"))  # the dvc of this environment, whatever PATH holds
QUERIES = 1_000
TRAIN_STEPS = 20
STAGES = ("download", "validate", "precompute", "tokenize", "train")
OUTPUTS = {
    "download": ["data/raw"],
    "validate": ["data/validation"],
    "precompute": ["data/embeddings"],
    "tokenize": ["data/tokens"],
    "train": ["models/student", "checkpoints"],
}
STAGE = f"""
import importlib, json, sys
from embedforge.config import load_params
importlib.import_module("embedforge.stages." + sys.argv[1]).run(load_params("params.yaml"))
print(json.dumps({{"peak_rss_mb": {PEAK_RSS_MB}}}))
from embedforge.exits import exit_now
exit_now(0)  # as the embedforge command leaves
"""
RETRIEVAL = """
import json, sys, time
import numpy as np
from embedforge.embeddings import EmbeddingCache
from embedforge.evaluation.retrieval import retrieval
cache = EmbeddingCache(sys.argv[1])
corpus = cache.matrix()  # the cache's float16, read as stored
rng = np.random.default_rng(0)
rows = rng.choice(len(corpus), size=min(int(sys.argv[2]), len(corpus)), replace=False)
queries = corpus[rows].astype(np.float32) + rng.normal(0, 0.05, (len(rows), corpus.shape[1])).astype(np.float32)
started = time.perf_counter()
found = retrieval(queries, corpus, [[int(row)] for row in rows], (1, 10))
seconds = time.perf_counter() - started
print(json.dumps({"search_seconds": seconds, "recall@10": found.recall[10], "peak_rss_mb": PEAK}))
""".replace("PEAK", PEAK_RSS_MB)


def corpus_words(mirror: Path) -> np.ndarray:
    snli = pd.read_parquet(mirror / "snli/train.parquet", columns=["premise", "hypothesis"])
    words = pd.unique(pd.concat([snli["premise"], snli["hypothesis"]]).str.split().explode().dropna())
    return np.asarray(words, dtype=object)


def write_corpus(directory: Path, words: np.ndarray, distinct: int, seed: int, sentences_per_text: int = 1) -> int:
    """``distinct`` seeded, distinct texts of ``sentences_per_text`` sentences of 5-17 mirror words each, a share of
    them twice; returns the rows."""
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    sentences: list[str] = []
    while len(sentences) < distinct * sentences_per_text:
        wanted = distinct * sentences_per_text - len(sentences)
        lengths = rng.integers(5, 18, size=wanted)
        picks = rng.integers(0, len(words), size=(wanted, 17))
        for length, row in zip(lengths, picks, strict=True):
            text = " ".join(words[row[:length]]) + "."
            if hash(text) not in seen:
                seen.add(hash(text))
                sentences.append(text)
    if sentences_per_text > 1:  # documents: runs of distinct sentences, so distinct too
        sentences = [
            " ".join(sentences[i : i + sentences_per_text]) for i in range(0, len(sentences), sentences_per_text)
        ]
    repeats = rng.choice(distinct, size=int(distinct * REPEATED_SHARE), replace=False)
    order = rng.permutation(np.r_[np.arange(distinct), repeats])
    directory.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(order), PART_ROWS)):
        body = [sentences[i] for i in order[start : start + PART_ROWS]]
        pd.DataFrame({"body": body}).to_parquet(directory / f"part-{part:03d}.parquet", index=False)
    return len(order)


def settings(teacher: str, extra: list[str]) -> list[str]:
    return [
        "seed=42",
        "tracking.enabled=false",
        "download.limit=null",
        (
            "download.datasets={corpus: {kind: sentences, files: data/external/corpus/*.parquet, "
            'columns: {text: body}, splits: {train: "*"}}, pairs: {kind: pairs_score, files: data/external/pairs.csv, '
            "score_range: [0, 5], splits: [validation]}}"
        ),
        "validate.max_duplicate_pair_rate=0.5",  # the corpus repeats a fifth of its sentences by design
        "validate.data_docs=false",
        f"precompute.teacher={teacher}",
        "precompute.datasets=[corpus, pairs]",
        "tokenize.datasets=[corpus, pairs]",
        "model.hidden_size=64",
        "model.num_heads=2",
        "model.intermediate_size=128",
        "model.num_layers=1",
        "model.teacher_layers=[0]",
        "model.max_positions=128",
        "tokenize.max_length=128",
        "train.datasets=[corpus]",
        "train.objectives={infonce: 0.0, distill: 1.0}",
        "train.epochs=1",
        f"train.max_steps={TRAIN_STEPS}",
        "train.batch_size=64",
        "train.sts_validation=pairs/validation",
        "train.checkpoint_every_steps=100000",
        "evaluate.sts_splits=[pairs/validation]",
        "evaluate.separation_splits=[pairs/validation]",
        "evaluate.retrieval_split=pairs/validation",
        "evaluate.speed_sentences=200",
        "evaluate.map_sentences=100",
        *extra,
    ]


def run_measured(command: list[str], cwd: Path) -> dict:
    """Seconds of ``command`` in its own process, the JSON object its last output line holds, and the peaks of its
    anonymous and file-backed resident memory (``RssAnon``, ``RssFile``), sampled every 20 ms."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, text=True)
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:  # it ended between the poll and the read
                break
            for line in status.splitlines():
                key, _, value = line.partition(":")
                if key in peaks:
                    peaks[key] = max(peaks[key], int(value.split()[0]))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.wait():
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{stderr[-3000:]}")
    return {
        "seconds": seconds,
        "anon_peak_mb": peaks["RssAnon"] / 1024,
        "file_peak_mb": peaks["RssFile"] / 1024,
        **json.loads(stdout.strip().splitlines()[-1]),
    }


def train_data_bytes(root: Path, dim: int) -> int:
    """The raw bytes train holds for its data: int32 token ids, float16 teacher vectors and 32-byte ids of every
    unit (a sentence, or a chunk of a longer text) of the token files it reads, as ``TokenStore`` keeps them."""
    tokens = units = 0
    for path in [root / "data/tokens/corpus/train.parquet", root / "data/tokens/pairs/validation.parquet"]:
        table = pq.read_table(path, columns=["length"])
        tokens += pc.sum(table["length"]).as_py()
        units += table.num_rows
    return 4 * tokens + units * (32 + 2 * dim)


def disk_bytes(root: Path, paths: list[str]) -> int:
    files = [file for path in paths for file in ((root / path).rglob("*") if (root / path).is_dir() else [root / path])]
    return sum(file.stat().st_size for file in files if file.is_file())


def embedforge(stage: str) -> list[str]:
    return [sys.executable, "-c", "from embedforge.cli import entry; entry()", stage]


def stage_process(stage: str) -> list[str]:
    return [sys.executable, "-c", STAGE, stage]


def prepare_project(
    root: Path, mirror: Path, words: np.ndarray, n: int, teacher: str, extra: list[str], sentences_per_text: int = 1
) -> int:
    """A project directory holding a corpus of ``n`` distinct texts, the eval pairs and pinned params; returns
    the corpus rows."""
    root.mkdir(parents=True)
    rows = write_corpus(root / "data/external/corpus", words, n, seed=n, sentences_per_text=sentences_per_text)
    stsb = pd.read_parquet(mirror / "stsb/validation.parquet")
    stsb[["sentence1", "sentence2", "score"]].to_csv(root / "data/external/pairs.csv", index=False)
    pinned_params(root, settings(teacher, extra))
    return rows


def one_size(
    root: Path, mirror: Path, words: np.ndarray, n: int, teacher: str, extra: list[str], sentences_per_text: int
) -> dict:
    rows = prepare_project(root, mirror, words, n, teacher, extra, sentences_per_text)
    point: dict = {"sentences": n, "rows": rows}
    items = {"download": rows, "validate": rows, "precompute": rows, "tokenize": rows, "train": n}
    for stage in STAGES:
        result = run_measured(stage_process(stage), root)
        point[stage] = {
            "seconds": round(result["seconds"], 2),
            "items_per_s": round(items[stage] / result["seconds"], 1),
            "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "anon_peak_mb": round(result["anon_peak_mb"], 1),
            "file_peak_mb": round(result["file_peak_mb"], 1),
            "bytes_on_disk": disk_bytes(root, OUTPUTS[stage]),
        }
    cache = next((root / "data/embeddings").iterdir())
    manifest = json.loads((cache / "manifest.json").read_text())
    point["precompute"]["vector_bytes"] = manifest["unique_sentences"] * manifest["dim"] * 2  # float16, raw
    point["precompute"]["units"] = manifest["unique_sentences"]  # distinct sentences and chunks the teacher embedded
    point["precompute"]["shard_bytes"] = sum(path.stat().st_size for path in cache.glob("*.parquet"))
    point["train"]["data_bytes"] = train_data_bytes(root, manifest["dim"])
    search = run_measured([sys.executable, "-c", RETRIEVAL, str(cache), str(QUERIES)], root)
    point["retrieval"] = {
        "seconds": round(search["seconds"], 2),
        "search_seconds": round(search["search_seconds"], 2),
        "items_per_s": round(QUERIES * n / search["search_seconds"], 1),  # query-candidate scores per second
        "peak_rss_mb": round(search["peak_rss_mb"], 1),
        "anon_peak_mb": round(search["anon_peak_mb"], 1),
        "corpus_bytes": point["precompute"]["vector_bytes"],
        "recall_at_10": search["recall@10"],
    }
    return point


def extrapolated(points: list[dict], n: int) -> dict:
    """Each stage's hours, anonymous peak and bytes on disk at ``n`` sentences, continuing the straight line
    through the two largest sizes measured (every figure grows linearly from 1M on)."""
    before, last = points[-2], points[-1]
    span = last["sentences"] - before["sentences"]

    def at_n(stage: str, key: str) -> float:
        slope = (last[stage][key] - before[stage][key]) / span
        return last[stage][key] + slope * (n - last["sentences"])

    figures = {
        stage: {
            "hours": round(at_n(stage, "seconds") / 3600, 2),
            "anon_peak_gb": round(at_n(stage, "anon_peak_mb") / 1024, 2),
            "bytes_on_disk_gb": round(at_n(stage, "bytes_on_disk") / 2**30, 2) if stage in OUTPUTS else None,
        }
        for stage in (*STAGES, "retrieval")
    }
    return {"sentences": n, "from_sizes": [before["sentences"], last["sentences"]], "stages": figures}


def growth(first: dict, last: dict, stage: str, data_key: str) -> float:
    """Anonymous memory the stage gained from the smallest to the largest size, over the data bytes it gained."""
    gained = last[stage]["anon_peak_mb"] - first[stage]["anon_peak_mb"]
    return round(gained * 2**20 / (last[stage][data_key] - first[stage][data_key]), 3)


def no_op_figures(root: Path) -> dict:
    """dvc commit (hashing every output once), then dvc status and a no-op dvc repro; the flow's cache keys."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO_ROOT / "data/external/README.md", root / "data/external/README.md")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    for command in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    for stage in ("evaluate", "export", "report"):  # inputs that do not grow with N; they complete what dvc records
        subprocess.run(embedforge(stage), cwd=root, env=env, check=True, capture_output=True)
    subprocess.run([*embedforge("params"), "--out", "params.resolved.yaml"], cwd=root, env=env, check=True)

    def timed(*command: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return round(time.perf_counter() - started, 2)

    figures = {"dvc_commit_seconds": timed(DVC, "commit", "-f", "-q")}
    figures["dvc_status_seconds"] = timed(DVC, "status")
    figures["dvc_repro_noop_seconds"] = timed(DVC, "repro")
    keys = (
        "from embedforge import dvcfile; from embedforge.config import load_params; "
        "from embedforge.stages import STAGES; from pathlib import Path; import time; "
        "cfg = load_params('params.yaml'); t = time.perf_counter(); "
        "[dvcfile.fingerprint(dvcfile.stage_spec(s), cfg, Path('.')) for s in STAGES]; "
        "print(time.perf_counter() - t)"
    )
    for attempt in ("flow_cache_keys_first_seconds", "flow_cache_keys_seconds"):  # the second finds the hashes known
        done = subprocess.run(
            [sys.executable, "-c", keys], cwd=root, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode:
            sys.exit(f"flow cache keys failed:\n{done.stderr[-3000:]}")
        figures[attempt] = round(float(done.stdout.strip().splitlines()[-1]), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-n", type=int, default=1_000_000, help="largest corpus (5000000 for the full run)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated sizes to measure")
    parser.add_argument("--minilm-max-n", type=int, default=100_000, help="largest size for the real teacher (0: none)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the corpora and outputs go (default: temp)")
    parser.add_argument(
        "--sentences-per-text", type=int, default=1, help="texts of this many sentences: >1 measures long documents"
    )
    add_set_argument(parser)
    args = parser.parse_args()
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        sys.exit("set EMBEDFORGE_MIRROR to the local dataset mirror, e.g. ../shared/data")
    mirror = Path(mirror).resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))).resolve()
    sizes = [n for n in map(int, args.sizes.split(",")) if n <= args.max_n]
    words = corpus_words(mirror)
    teacher = build_tiny_sentence_model(workdir / "tiny-teacher", layers=1, hidden_size=64)
    env_mirror = os.environ.pop(MIRROR_ENV)  # the benchmark's data is its own files, not the mirror's datasets
    try:
        points = [
            one_size(workdir / f"n{n}", mirror, words, n, str(teacher), args.set, args.sentences_per_text)
            for n in sizes
        ]
        minilm = {}
        for n in [n for n in sizes if n <= args.minilm_max_n]:
            root = workdir / f"n{n}"
            pinned_params(root, settings("packaged:all-MiniLM-L6-v2", args.set))
            shutil.rmtree(root / "data/embeddings")
            result = run_measured(stage_process("precompute"), root)
            tiny = next(p for p in points if p["sentences"] == n)["precompute"]["seconds"]
            minilm[str(n)] = {
                "seconds": round(result["seconds"], 2),
                "items_per_s": round(next(p for p in points if p["sentences"] == n)["rows"] / result["seconds"], 1),
                "peak_rss_mb": round(result["peak_rss_mb"], 1),
                "model_share": round(1 - tiny / result["seconds"], 3),
            }
            pinned_params(root, settings(str(teacher), args.set))
        no_op = no_op_figures(workdir / f"n{sizes[-1]}")
    finally:
        os.environ[MIRROR_ENV] = env_mirror
    first, last = points[0], points[-1]
    base = next((p for p in points if p["sentences"] == 100_000), first)
    ratios = {
        stage: {
            "items_per_s_largest_vs_10k": round(last[stage]["items_per_s"] / first[stage]["items_per_s"], 3),
            "items_per_s_largest_vs_100k": round(last[stage]["items_per_s"] / base[stage]["items_per_s"], 3),
            "peak_rss_largest_vs_100k": round(last[stage]["peak_rss_mb"] / base[stage]["peak_rss_mb"], 3),
        }
        for stage in (*STAGES, "retrieval")
    }
    if len(points) > 1:
        sentences = last["sentences"] - first["sentences"]
        ratios["train"]["anon_gained_vs_data_bytes"] = growth(first, last, "train", "data_bytes")
        ratios["train"]["anon_bytes_per_sentence"] = round(
            (last["train"]["anon_peak_mb"] - first["train"]["anon_peak_mb"]) * 2**20 / sentences, 1
        )
        ratios["train"]["data_bytes_per_sentence"] = round(
            (last["train"]["data_bytes"] - first["train"]["data_bytes"]) / sentences, 1
        )
        ratios["retrieval"]["anon_gained_vs_corpus_bytes"] = growth(first, last, "retrieval", "corpus_bytes")
    print(
        json.dumps(
            {
                "cpu_count": os.cpu_count(),
                "sizes": sizes,
                "sentences_per_text": args.sentences_per_text,
                "points": points,
                "ratios": ratios,
                "minilm_precompute": minilm,
                "no_op_at_largest": no_op,
                "extrapolated": extrapolated(points, EXTRAPOLATE_TO) if len(points) > 1 else None,
                "workdir": str(workdir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
