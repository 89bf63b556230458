"""Helpers the tests import: the repository's paths, quick params, running stages or commands as a user would,
a git + DVC clone of the project, and measurements that are the same on every run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
from filelock import FileLock

from embedforge.config import load_params, write_overrides
from embedforge.data.schema import RAW_SCHEMA
from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.stages.download import SplitWriter

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SLICE_ROWS = 120


def run_stages_in(root: Path, stages: list[str], overrides: list[str]) -> Path:
    """Run ``stages`` in ``root`` on the repository's params plus ``overrides``, untracked; return root/data."""
    import importlib

    previous = Path.cwd()
    os.chdir(root)
    try:
        cfg = load_params(REPO_ROOT / "params.yaml", [*overrides, "tracking.enabled=false"])
        for stage in stages:
            importlib.import_module(f"embedforge.stages.{stage}").run(cfg)
    finally:
        os.chdir(previous)
    return root / "data"


def write_raw_split(frame: pd.DataFrame, path: Path, schema: pa.Schema = RAW_SCHEMA) -> None:
    """A raw split as download writes it, for tests that build their own data."""
    writer = SplitWriter(path, schema)
    writer.write(frame)
    writer.close()


HOLD_THE_LOCK = """
import time
from embedforge.runlock import pipeline_lock
with pipeline_lock("`embedforge run`"):
    print("held", flush=True)
    time.sleep(300)
"""


@contextlib.contextmanager
def pipeline_running_elsewhere(project: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the project's pipeline lock (as a running `embedforge run` does) until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_THE_LOCK,
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def leftovers(root: Path) -> list[Path]:
    """Temporary files or directories a failed stage must not leave behind."""
    return [path for path in root.rglob(".*") if path.name.endswith(".tmp")]


PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "src", "data/external/README.md"]
QUICK_EVALUATION = {"speed_sentences": 200, "speed_rounds": 1, "map_sentences": 100}


def sh(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A command a user would type, which must succeed; its output is in the failure message."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def clone_env(repo: Path, mirror: Path) -> dict:
    """The environment a user's shell has in a clone at ``repo``: our commands on PATH, the clone's own src/."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),  # the clone's code is the code that runs, as in a user's clone
        "EMBEDFORGE_MIRROR": str(mirror),
        "MLFLOW_TRACKING_URI": "",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }


def make_clone(repo: Path, mirror: Path, overrides: list[str] = ()) -> tuple[Path, dict]:
    """A git + DVC repository laid out like a clone of this project, running its own copy of src/."""
    repo.mkdir()
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, repo / name)
    env = clone_env(repo, mirror)
    params = (repo / "params.yaml").read_text()
    for knob, quick in QUICK_EVALUATION.items():
        params = re.sub(rf"^(  {knob}:) \S+", rf"\1 {quick}", params, count=1, flags=re.MULTILINE)
    (repo / "params.yaml").write_text(params)
    if overrides:
        write_overrides(repo / "params.yaml", list(overrides))
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("dvc", "config", "core.analytics", "false", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "clone", cwd=repo, env=env)
    return repo, env


TINY_STUDENT = [
    "model.hidden_size=64",
    "model.num_heads=2",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.teacher_layers=[1, 0]",
    "model.max_positions=128",
]


def tiny_pipeline(tiny_teacher: Path) -> list[str]:
    """The overrides of a whole pipeline run in seconds: 60 rows a split, the tiny teacher, a tiny student."""
    return [
        "download.limit=60",
        f"precompute.teacher={tiny_teacher}",
        "precompute.backend=torch",
        *TINY_STUDENT,
        "train.batch_size=8",
        "train.epochs=1",
    ]


def tiny_run(mirror: Path, tiny_teacher: Path) -> list[str]:
    """The overrides of a whole pipeline run in seconds in a plain project directory: the mirror named, 60 rows a
    split, the tiny teacher, a tiny student, quick evaluation."""
    return [
        "download.source=mirror",
        f"download.mirror={mirror}",
        "download.limit=60",
        f"precompute.teacher={tiny_teacher}",
        "precompute.backend=torch",
        "model.hidden_size=64",
        "model.num_heads=2",
        "model.intermediate_size=128",
        "model.teacher_layers=[1, 0]",
        "model.max_positions=128",
        "train.batch_size=8",
        "train.epochs=1",
        "evaluate.speed_sentences=40",
        "evaluate.speed_rounds=1",
        "evaluate.map_sentences=30",
    ]


def user_env(home: Path) -> dict[str, str]:
    """A user's shell for the flow: an empty PREFECT_HOME under ``home``, no Prefect API or MLflow URI configured,
    this repository importable (``python -m pipelines.flow``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(home / "prefect-home"), PYTHONPATH=str(REPO_ROOT))
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    return env


STAGED = [  # the three-phase schedule, quick
    "train.schedule=staged",
    "train.staged.foundation={data_fraction: 0.3, epochs: 2}",
    "train.staged.consolidation={data_fraction: 0.6, epochs: 2, balanced: true}",
    "train.staged.mastery={data_fraction: 1.0, epochs: 1}",
    "train.warmup_ratio=0.2",
    "train.resume_warmup={enabled: true, epochs: 2, start: 0.25}",
    "train.early_stopping.patience=5",
]


LATTICE = [  # a small lattice student
    "model.kind=lattice",
    "model.lattice.mode=null",
    "model.lattice.size=[4, 3, 3]",
    "model.lattice.channels=4",
]
DYNAMIC = [  # a dynamic student that grows every epoch
    "model.kind=dynamic",
    "model.dynamic.embedding_dim=16",
    "model.dynamic.expand_by=8",
    "model.dynamic.max_dims=32",
    "model.dynamic.saturation=0.01",  # every epoch counts as saturated: growth is what is tested
    "model.dynamic.min_batch_size=2",
    "model.dynamic.prune=false",  # pruning is proven on hand-made activity in test_dynamic.py
]


QUICK_TRAINING = [
    "train.batch_size=8",
    "train.epochs=2",
    "train.lr=1e-3",
    "train.loader_workers=0",
    "train.log_every_steps=1",
    "train.checkpoint_every_steps=2",
    "train.objectives={infonce: 1.0, distill: 0.5}",
]


def log_evaluation(
    uri: str,
    kind: str,
    spearman: float | None,
    speed_ratio: float | None,
    started_s: int,
    teacher: float | None = None,
    in_pipeline: bool = True,
) -> str:
    """A hand-made evaluate run holding the given numbers on stsb/validation (None: not logged) and ``model.kind``,
    nested in a `pipeline` run as `embedforge run` leaves it (or alone, as `embedforge evaluate` does), started
    ``started_s`` seconds into the store's history. Returns the id of the pipeline run, or of the lone evaluate run.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name("embedforge")
    experiment_id = found.experiment_id if found else client.create_experiment("embedforge")
    started_ms = 1_700_000_000_000 + started_s * 1000
    kind_param = [Param("model.kind", kind)]
    tags = {}
    if in_pipeline:
        parent = client.create_run(experiment_id, start_time=started_ms, run_name="pipeline").info.run_id
        client.log_batch(parent, params=kind_param)
        tags["mlflow.parentRunId"] = parent
    child = client.create_run(experiment_id, start_time=started_ms + 1, tags=tags, run_name="evaluate").info.run_id
    numbers = {
        "eval.student.sts.stsb/validation.spearman": spearman,
        "eval.speed_ratio": speed_ratio,
        "eval.teacher.sts.stsb/validation.spearman": teacher,
    }
    metrics = [Metric(key, value, started_ms, 0) for key, value in numbers.items() if value is not None]
    client.log_batch(child, metrics=metrics, params=kind_param)
    for run_id in (child, *tags.values()):
        client.set_terminated(run_id)
    return tags.get("mlflow.parentRunId", child)


def log_export(uri: str, parent: str, variants: dict[str, tuple[float, float]], started_s: int) -> None:
    """A hand-made export run under pipeline run ``parent``: each variant's STS Spearman on stsb/validation and
    speed ratio, under the names the export stage logs them."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("embedforge").experiment_id
    started_ms = 1_700_000_000_000 + started_s * 1000
    tags = {"mlflow.parentRunId": parent}
    child = client.create_run(experiment_id, start_time=started_ms, tags=tags, run_name="export").info.run_id
    metrics = [
        Metric(f"export.variants.{name}.{key}", value, started_ms, 0)
        for name, (spearman, speed) in variants.items()
        for key, value in (("sts.stsb/validation.spearman", spearman), ("speed_ratio", speed))
    ]
    client.log_batch(child, metrics=metrics)
    client.set_terminated(child)


def built_once(shared: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``shared/name`` made by ``build`` once per test run: pytest-xdist's workers share ``shared`` and a lock, so
    the first worker to ask builds it and the others wait and reuse it. A build that fails leaves no marker, and
    the next asker builds afresh."""
    state = shared / name
    done = shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True)
            build(state)
            done.touch()
    return state


def copy_state(state: Path, dest: Path) -> Path:
    """A private copy of a built state, to change at will: real copies (a test writes its files in place, and a
    hard link would write through to the state), and the MLflow sqlite stores' absolute artifact paths
    pointed at the copy, so a run logged there writes its artifacts under ``dest``."""
    shutil.copytree(state, dest, symlinks=True)
    for store in dest.rglob("mlflow.db"):
        repoint_sqlite(store, str(state), str(dest))
    return dest


def repoint_sqlite(store: Path, old: str, new: str) -> None:
    """Replace ``old`` with ``new`` in every text column of every table of a sqlite database."""
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if kind.upper().startswith(("VARCHAR", "TEXT")):
                    update = f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?)'
                    db.execute(update, (old, new, old))


PRECOMPUTE_SHARD_SIZE = 80  # distinct sentences per shard in the precompute tests: the small mirror fills several


def cache_dir(project: Path) -> Path:
    """Where precompute writes the tiny teacher's embeddings."""
    return project / "data/embeddings/model"


def distinct_sentences(project: Path) -> dict[str, str]:
    texts = {}
    for dataset in ("snli", "stsb", "sick"):
        for split in ("train", "validation"):
            frame = pd.read_parquet(project / "data/raw" / dataset / f"{split}.parquet")
            for text in pd.concat([frame["sentence1"], frame["sentence2"]]):
                normalized = normalize_text(text)
                texts[sentence_id(normalized)] = normalized
    return texts


EMBEDFORGE = str(Path(sys.executable).with_name("embedforge"))


def embedforge(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`embedforge ARGS` in ``cwd`` as its own process, with ``env`` on top of this one's; it may fail."""
    environment = {**os.environ, "MLFLOW_TRACKING_URI": "", **env}
    return subprocess.run(
        [EMBEDFORGE, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def assert_user_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command failed as a user error: exit 2, no traceback, each fragment in what it said."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr


class Killed(Exception):
    """Stands in for a kill: raised from inside the training loop at a chosen moment."""
