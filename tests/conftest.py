"""Shared fixtures: a small slice of the local mirror, and a project directory to run stages in.

The mirror's location comes from EMBEDFORGE_MIRROR (CI sets it to ../shared/data);
it is read once here and removed from the environment so that each test decides
its own source explicitly.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from common import build_tiny_sentence_model

from embedforge.config import MIRROR_ENV, Params, load_params, write_overrides
from embedforge.data.schema import RAW_SCHEMA
from embedforge.stages.download import SplitWriter

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_MIRROR = os.environ.pop(MIRROR_ENV, None) or os.environ.get("EMBEDFORGE_TEST_MIRROR")
if SHARED_MIRROR:  # pytest-xdist's workers start from this process's environment, without MIRROR_ENV
    os.environ["EMBEDFORGE_TEST_MIRROR"] = SHARED_MIRROR
SLICE_ROWS = 120
MIRROR_SPLITS = {
    "snli": ["train", "validation", "test"],
    "stsb": ["train", "validation"],
    "sick": ["train", "validation"],
}


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exported ONNX models and other caches go to a directory of this test session, not the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def shared_mirror() -> Path:
    if not SHARED_MIRROR or not Path(SHARED_MIRROR).is_dir():
        pytest.fail(f"set {MIRROR_ENV} to the local dataset mirror (e.g. ../shared/data) to run the tests")
    return Path(SHARED_MIRROR)


@pytest.fixture(scope="session")
def small_mirror(shared_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SLICE_ROWS rows of every split of the shared mirror, same layout and columns."""
    root = tmp_path_factory.mktemp("mirror")
    for dataset, splits in MIRROR_SPLITS.items():
        (root / dataset).mkdir()
        for split in splits:
            frame = pd.read_parquet(shared_mirror / dataset / f"{split}.parquet").head(SLICE_ROWS)
            frame.to_parquet(root / dataset / f"{split}.parquet", index=False)
    return root


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow sqlite store: creating one takes seconds, copying it takes none."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path) -> Path:
    """A working directory holding the repository's params.yaml and an empty default MLflow store."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # mlflow.set_tracking_uri exports it; restored after the test
    return tmp_path


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


@pytest.fixture(scope="session")
def validated_data(small_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ after a real download (60 rows a split) and a passing validation, made once per session."""
    return run_stages_in(
        tmp_path_factory.mktemp("validated"),
        ["download", "validate"],
        ["download.source=mirror", f"download.mirror={small_mirror}", "download.limit=60"],
    )


@pytest.fixture(scope="session")
def train_ready_data(small_mirror: Path, tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ with every stage before train done on the whole small mirror, the tiny teacher as teacher."""
    return run_stages_in(
        tmp_path_factory.mktemp("train_ready"),
        ["download", "validate", "precompute", "tokenize"],
        [
            "download.source=mirror",
            f"download.mirror={small_mirror}",
            "download.limit=null",
            f"precompute.teacher={tiny_teacher}",
            "precompute.backend=torch",
        ],
    )


@pytest.fixture
def prepared(project: Path, validated_data: Path) -> Path:
    """The project with downloaded, validated data in place, ready for precompute and tokenize."""
    shutil.copytree(validated_data, project / "data")
    return project


@pytest.fixture
def mirror_params(project: Path, small_mirror: Path):
    """Build params for a run on the small mirror, with extra ``--set`` overrides."""

    def build(*overrides: str) -> Params:
        return load_params(
            project / "params.yaml",
            ["download.source=mirror", f"download.mirror={small_mirror}", "tracking.enabled=false", *overrides],
        )

    return build


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
    env = {
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


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_model(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture
def tiny(project: Path, small_mirror: Path, tiny_teacher: Path) -> list[str]:
    """The project with dvc.yaml beside params.yaml; returns the overrides of a tiny whole-pipeline run."""
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    return [
        "download.source=mirror",
        f"download.mirror={small_mirror}",
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


QUICK_TRAINING = [
    "train.batch_size=8",
    "train.epochs=2",
    "train.lr=1e-3",
    "train.loader_workers=0",
    "train.log_every_steps=1",
    "train.checkpoint_every_steps=2",
    "train.objectives={infonce: 1.0, distill: 0.5}",
]


@pytest.fixture
def ready(project: Path, train_ready_data: Path, tiny_teacher: Path):
    """The project with data through tokenize; returns a builder of params with extra overrides."""
    shutil.copytree(train_ready_data, project / "data")

    def params(*overrides: str):
        return load_params(
            project / "params.yaml",
            [
                "tracking.enabled=false",
                f"precompute.teacher={tiny_teacher}",
                *TINY_STUDENT,
                *QUICK_TRAINING,
                *overrides,
            ],
        )

    return params


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


def autograd_saved_bytes(model, features: dict) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward of ``features`` in train mode,
    the model's own tensors (weights, buffers) left out.

    Counted through saved-tensor hooks, so the figure is the same on every run (sampling RSS is not: another
    thread's allocation can land in the window). A checkpointed region keeps its input itself, outside this
    count, and recomputes the rest in backward.
    """
    import torch  # only the tests that measure autograd load it here

    own = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(features)
    return sum(saved.values())
