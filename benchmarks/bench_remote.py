"""Team storage on a DVC remote: push and pull of the teacher-embedding cache, and dvc status on a large one.

    EMBEDFORGE_MIRROR=../shared/data python benchmarks/bench_remote.py [--sentences 70000] [--status-gb 2.0]

Push and pull: in a fresh git + DVC repository, a cache of ``--sentences`` sentences (the
``distill-small`` preset embeds about 70 thousand) is tracked with ``dvc add data/embeddings``
and pushed to a local-folder remote: wall seconds, MB/s, bytes and files in the remote, and a
second push with nothing new. Then the workspace copy and ``.dvc/cache`` are deleted, ``dvc pull``
is timed and every pulled file's sha256 must equal the original's. ``--from DIR`` pushes an
existing ``data/embeddings`` folder instead. ``dvc status`` in the still empty repository shows
what any dvc command costs before its work: at the default size it is most of each figure.

Status: a second repository tracks ``--status-gb`` GB (2**30 bytes) of shards. ``dvc add`` (the first
hashing, plus the copy into the cache), then ``dvc status`` twice with nothing changed, once after
touching one shard (its mtime changes, so DVC rehashes that one file), and twice with its hash
cache lost: after ``rm -rf .dvc/tmp``, then after deleting DVC's site cache. In DVC 3 the hash
cache (``hashes/local/cache.db``, by path, inode, mtime and size) is not in ``.dvc/tmp`` but in
``<site cache>/repo/<token>/``, the site cache defaulting to /var/tmp/dvc (here one in the work
folder, through DVC_SITE_CACHE_DIR). The token hashes the mtime of ``.dvc/tmp/btime``, so deleting
``.dvc/tmp`` makes DVC start a new, empty hash cache (``rm_dvc_tmp_started_a_new_hash_cache``).

The caches are written as the precompute stage writes them, by its own code (``Plan``, ``Target``,
``write_shard``): hash partitions of ``precompute.shard_size`` sentences, 1,024-row groups, zstd,
the preset's dtype (float16) and the teacher's 384 dims, the manifest last. The sentences are
bench_scale's seeded corpus of the mirror's SNLI words; the vectors are seeded random unit vectors,
which compress like real ones: neither does (shards of MiniLM's vectors of 4,096 SNLI sentences
and of random ones differ by 0.01%). The files are in the page cache when DVC reads them, so
hashing is CPU-bound here. Prints one JSON object; the work folder is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from bench_scale import DVC, corpus_words, write_corpus
from common import add_set_argument, pinned_params

from embedforge.config import MIRROR_ENV, PrecomputeParams
from embedforge.data.sentences import id_prefix, normalize_text, sentence_id
from embedforge.embeddings import write_shard
from embedforge.embeddings.plan import Plan, Target
from embedforge.embeddings.shards import shard_record
from embedforge.files import sha256_file
from embedforge.models import teacher as teachers
from embedforge.models.teacher import TeacherRef

MB = 2**20
GB = 2**30
TEACHER_DIM = 384  # all-MiniLM-L6-v2, the presets' teacher
CALIBRATION_SENTENCES = 4096  # a cache this size gives the bytes a sentence takes, to size the status cache


def write_cache(
    embeddings: Path, words: np.ndarray, sentences: int, params: PrecomputeParams, teacher: TeacherRef, seed: int
) -> dict:
    """A finished cache of ``sentences`` seeded sentences and random unit vectors in ``embeddings/<teacher>``.

    bench_scale's corpus writer makes the distinct sentences (its repeats dropped here); precompute's
    own plan, shard writer and manifest make the cache.
    """
    embeddings.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=embeddings.parent) as corpus:
        write_corpus(Path(corpus), words, sentences, seed)
        files = sorted(Path(corpus).glob("*.parquet"))
        bodies = pd.concat([pd.read_parquet(path)["body"] for path in files])
    texts = np.asarray(list(dict.fromkeys(map(normalize_text, bodies))), dtype=object)
    ids = np.asarray([sentence_id(text) for text in texts], dtype=object)
    prefixes = np.fromiter((id_prefix(identifier) for identifier in ids), dtype=np.uint64, count=len(ids))
    target = Target(embeddings / teacher.name, Plan.of(prefixes, params.shard_size), teacher, TEACHER_DIM, params)
    target.prepare()
    partitions = prefixes % np.uint64(target.plan.partitions)
    rng = np.random.default_rng(seed)
    shards = []
    for partition in range(target.plan.partitions):
        rows = np.flatnonzero(partitions == partition)
        vectors = rng.standard_normal((len(rows), TEACHER_DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        path = target.shard_path(partition)
        write_shard(path, list(ids[rows]), list(texts[rows]), vectors, target.shard_info(partition))
        shards.append(shard_record(path))
    target.write_manifest(files, shards)
    return {"sentences": len(texts), "shards": len(shards)}


def copy_cache(source: Path, embeddings: Path) -> dict:
    """An existing data/embeddings folder copied to ``embeddings``: its path, and the sentences its manifests count."""
    shutil.copytree(source, embeddings)
    manifests = [json.loads(path.read_text()) for path in embeddings.rglob("manifest.json")]
    return {"from": str(source.resolve()), "sentences": sum(manifest["unique_sentences"] for manifest in manifests)}


def folder_size(root: Path) -> tuple[int, int]:
    """Bytes and number of the files under ``root``."""
    sizes = [path.stat().st_size for path in root.rglob("*") if path.is_file()]
    return sum(sizes), len(sizes)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of ``command`` in its own process, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return round(seconds, 3), done.stdout


def unchanged_status(root: Path, env: dict[str, str]) -> float:
    """Seconds of ``dvc status``, which must find the workspace as it was added."""
    seconds, printed = timed([DVC, "status", "--json"], root, env)
    if json.loads(printed) != {}:
        sys.exit(f"dvc status in {root} saw a change where there is none:\n{printed}")
    return seconds


def init_repo(root: Path, site_cache: Path) -> dict[str, str]:
    """A git + DVC repository at ``root``, without analytics or the update check's background process, and the
    environment to run its dvc in: DVC's site cache (its hash cache) in ``site_cache``."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(site_cache)}
    root.mkdir(parents=True)
    for command in (
        ["git", "init", "-q"],
        [DVC, "init", "-q"],
        [DVC, "config", "core.analytics", "false"],
        [DVC, "config", "core.check_update", "false"],
    ):
        timed(command, root, env)
    return env


def mb_per_s(size: int, seconds: float) -> float:
    return round(size / MB / seconds, 1)


def push_and_pull(root: Path, site_cache: Path, remote: Path, fill: Callable[[Path], dict]) -> dict:
    """``dvc add``, push, no-op push, then pull into an empty workspace and cache, checked file by file."""
    env = init_repo(root, site_cache)
    empty_repo_status = unchanged_status(root, env)
    embeddings = root / "data/embeddings"
    cache = fill(embeddings)
    size, files = folder_size(embeddings)
    originals = file_hashes(embeddings)
    add_seconds, _ = timed([DVC, "add", "-q", "data/embeddings"], root, env)
    timed([DVC, "remote", "add", "-d", "local", str(remote)], root, env)
    push_seconds, _ = timed([DVC, "push", "-q"], root, env)
    remote_bytes, remote_files = folder_size(remote)
    push_noop_seconds, _ = timed([DVC, "push", "-q"], root, env)
    shutil.rmtree(embeddings)
    shutil.rmtree(root / ".dvc/cache")
    pull_seconds, _ = timed([DVC, "pull", "-q"], root, env)
    return {
        **cache,
        "bytes": size,
        "files": files,
        "empty_repo_status_seconds": empty_repo_status,
        "dvc_add_seconds": add_seconds,
        "push_seconds": push_seconds,
        "push_mb_per_s": mb_per_s(size, push_seconds),
        "remote_bytes": remote_bytes,
        "remote_files": remote_files,
        "push_noop_seconds": push_noop_seconds,
        "pull_seconds": pull_seconds,
        "pull_mb_per_s": mb_per_s(size, pull_seconds),
        "pulled_sha256_match": file_hashes(embeddings) == originals,
    }


def status_costs(root: Path, site_cache: Path, fill: Callable[[Path], dict]) -> dict:
    """``dvc add`` of a large cache, then ``dvc status`` unchanged, after a touch, and with the hash cache lost."""
    env = init_repo(root, site_cache)
    embeddings = root / "data/embeddings"
    cache = fill(embeddings)
    size, files = folder_size(embeddings)
    add_seconds, _ = timed([DVC, "add", "-q", "data/embeddings"], root, env)
    unchanged = [unchanged_status(root, env) for _ in range(2)]
    touched = next(embeddings.rglob("part-*.parquet"))
    touched.touch()
    after_touch = unchanged_status(root, env)
    hash_caches = set((site_cache / "repo").iterdir())
    shutil.rmtree(root / ".dvc/tmp")
    after_rm_dvc_tmp = unchanged_status(root, env)
    new_hash_cache = set((site_cache / "repo").iterdir()) > hash_caches
    shutil.rmtree(site_cache)
    after_rm_site_cache = unchanged_status(root, env)
    typical = statistics.median(unchanged)
    return {
        **cache,
        "bytes": size,
        "files": files,
        "dvc_add_seconds": add_seconds,
        "dvc_add_mb_per_s": mb_per_s(size, add_seconds),
        "status_unchanged_seconds": unchanged,
        "status_after_touching_one_shard_seconds": after_touch,
        "touched_shard_bytes": touched.stat().st_size,
        "status_after_rm_dvc_tmp_seconds": after_rm_dvc_tmp,
        "rm_dvc_tmp_started_a_new_hash_cache": new_hash_cache,
        "status_after_rm_site_cache_seconds": after_rm_site_cache,
        "rehash_mb_per_s": mb_per_s(size, after_rm_site_cache),
        "first_hash_vs_unchanged_status": round(add_seconds / typical, 1),
        "lost_hash_cache_vs_unchanged_status": round(after_rm_site_cache / typical, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=70_000, help="sentences in the pushed and pulled cache")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="push and pull this data/embeddings folder instead of a generated one",
    )
    parser.add_argument("--status-gb", type=float, default=2.0, help="GB (2**30 bytes) of shards dvc status watches")
    parser.add_argument("--workdir", type=Path, default=None, help="a new folder for the repositories (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    add_set_argument(parser)
    args = parser.parse_args()
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        sys.exit("set EMBEDFORGE_MIRROR to the local dataset mirror, e.g. ../shared/data")
    if args.workdir:
        if args.workdir.exists():
            sys.exit(f"--workdir {args.workdir} exists: name a new folder (the benchmark deletes it at the end)")
        args.workdir.mkdir(parents=True)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-remote-"))).resolve()
    try:
        params = pinned_params(workdir, ["preset=distill-small", *args.set]).precompute
        teacher = teachers.resolve(params.teacher)
        words = corpus_words(Path(mirror))
        cache = partial(write_cache, words=words, params=params, teacher=teacher)
        cache(workdir / "calibration", sentences=CALIBRATION_SENTENCES, seed=2)
        bytes_per_sentence = folder_size(workdir / "calibration")[0] / CALIBRATION_SENTENCES
        shutil.rmtree(workdir / "calibration")
        push_pull = push_and_pull(
            workdir / "push-pull",
            workdir / "push-pull-site-cache",
            workdir / "remote",
            partial(copy_cache, args.source) if args.source else partial(cache, sentences=args.sentences, seed=0),
        )
        status_sentences = round(args.status_gb * GB / bytes_per_sentence)
        status = status_costs(
            workdir / "status", workdir / "status-site-cache", partial(cache, sentences=status_sentences, seed=1)
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    arguments = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    print(
        json.dumps(
            {
                "dvc_version": version("dvc"),
                "cpu_count": os.cpu_count(),
                "arguments": arguments,
                "cache": {
                    "dtype": params.dtype,
                    "dim": TEACHER_DIM,
                    "shard_size": params.shard_size,
                    "bytes_per_sentence": round(bytes_per_sentence, 1),
                },
                "push_pull": push_pull,
                "status": status,
                "workdir": str(workdir) if args.keep else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
