"""Shared fixtures: a small slice of the local mirror, a project directory to run stages in, and the expensive
states (a finished tiny pipeline, prepared data) built once per test run and copied into each test that needs them.

The mirror's location comes from EMBEDFORGE_MIRROR (CI sets it to ../shared/data);
it is read once here and removed from the environment so that each test decides
its own source explicitly.
"""

from __future__ import annotations

import os

# Torch takes every core by default, read at its import: two xdist workers, and the stage processes their tests
# start, would each run two threads on CI's two cores. One thread each; the stage processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from common import build_tiny_sentence_model
from helpers import (
    PRECOMPUTE_SHARD_SIZE,
    QUICK_TRAINING,
    REPO_ROOT,
    SLICE_ROWS,
    TINY_STUDENT,
    built_once,
    clone_env,
    copy_state,
    make_clone,
    run_stages_in,
    sh,
    tiny_pipeline,
    tiny_run,
    user_env,
)

from embedforge.config import MIRROR_ENV, Params, load_params, write_overrides

SHARED_MIRROR = os.environ.pop(MIRROR_ENV, None) or os.environ.get("EMBEDFORGE_TEST_MIRROR")
if SHARED_MIRROR:  # pytest-xdist's workers start from this process's environment, without MIRROR_ENV
    os.environ["EMBEDFORGE_TEST_MIRROR"] = SHARED_MIRROR
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
def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A directory every worker of this test run shares (pytest-xdist's base temp), for the states built once."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def small_mirror(shared_mirror: Path, shared_dir: Path) -> Path:
    """The first SLICE_ROWS rows of every split of the shared mirror, same layout and columns; one path for every
    worker, so params that name it resolve alike in every state built once."""

    def build(root: Path) -> None:
        for dataset, splits in MIRROR_SPLITS.items():
            (root / dataset).mkdir()
            for split in splits:
                frame = pd.read_parquet(shared_mirror / dataset / f"{split}.parquet").head(SLICE_ROWS)
                frame.to_parquet(root / dataset / f"{split}.parquet", index=False)

    return built_once(shared_dir, "mirror", build)


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


@pytest.fixture(scope="session")
def validated_data(small_mirror: Path, shared_dir: Path) -> Path:
    """data/ after a real download (60 rows a split) and a passing validation, made once per test run: copy it."""

    def build(root: Path) -> None:
        overrides = ["download.source=mirror", f"download.mirror={small_mirror}", "download.limit=60"]
        run_stages_in(root, ["download", "validate"], overrides)

    return built_once(shared_dir, "validated", build) / "data"


@pytest.fixture(scope="session")
def train_ready_data(small_mirror: Path, tiny_teacher: Path, shared_dir: Path) -> Path:
    """data/ with every stage before train done on the whole small mirror, the tiny teacher as teacher, made once
    per test run: copy it."""

    def build(root: Path) -> None:
        overrides = [
            "download.source=mirror",
            f"download.mirror={small_mirror}",
            "download.limit=null",
            f"precompute.teacher={tiny_teacher}",
            "precompute.backend=torch",
        ]
        run_stages_in(root, ["download", "validate", "precompute", "tokenize"], overrides)

    return built_once(shared_dir, "train_ready", build) / "data"


@pytest.fixture
def prepared(project: Path, validated_data: Path) -> Path:
    """The project with downloaded, validated data in place, ready for precompute and tokenize."""
    shutil.copytree(validated_data, project / "data")
    return project


@pytest.fixture
def precompute_params(prepared, mirror_params, tiny_teacher):
    """Build params for precompute on the prepared project with the tiny teacher, in small shards."""

    def build(*overrides: str):
        return mirror_params(
            f"precompute.teacher={tiny_teacher}",
            f"precompute.shard_size={PRECOMPUTE_SHARD_SIZE}",
            "precompute.batch_size=16",
            *overrides,
        )

    return build


@pytest.fixture
def mirror_params(project: Path, small_mirror: Path):
    """Build params for a run on the small mirror, with extra ``--set`` overrides."""

    def build(*overrides: str) -> Params:
        return load_params(
            project / "params.yaml",
            ["download.source=mirror", f"download.mirror={small_mirror}", "tracking.enabled=false", *overrides],
        )

    return build


@pytest.fixture(scope="session")
def tiny_teacher(shared_dir: Path) -> Path:
    return built_once(shared_dir, "tiny_teacher", build_tiny_sentence_model) / "model"


@pytest.fixture(scope="session")
def finished_pipeline(shared_dir: Path, small_mirror: Path, tiny_teacher: Path) -> Path:
    """A git + DVC clone of the project in which the tiny pipeline (`embedforge run`) has finished: every output,
    dvc.lock, the .dvc cache with its run cache, and the MLflow store. Built once per test run; copy it."""

    def build(state: Path) -> None:
        repo, env = make_clone(state / "repo", small_mirror, tiny_pipeline(tiny_teacher))
        sh("embedforge", "run", cwd=repo, env=env)

    return built_once(shared_dir, "finished_pipeline", build) / "repo"


@pytest.fixture
def finished_clone(finished_pipeline: Path, small_mirror: Path, tmp_path: Path) -> tuple[Path, dict]:
    """This test's own copy of the finished tiny pipeline, and its shell environment."""
    repo = copy_state(finished_pipeline, tmp_path / "repo")
    return repo, clone_env(repo, small_mirror)


@pytest.fixture
def tiny(project: Path, small_mirror: Path, tiny_teacher: Path) -> list[str]:
    """The project with dvc.yaml beside params.yaml; returns the overrides of a tiny whole-pipeline run."""
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    return tiny_run(small_mirror, tiny_teacher)


@pytest.fixture(scope="session")
def flowed_pipeline(shared_dir: Path, small_mirror: Path, tiny_teacher: Path) -> Path:
    """A project directory (``project/``) in which `python -m pipelines.flow` ran the tiny pipeline once, in a fresh
    process as a user starts it: every output, the MLflow store and the flow's own cache (.flow-cache), with the
    tiny overrides written into its params.yaml; the run's output is in ``flow.log``. Built once per test run:
    copy the project."""

    def build(state: Path) -> None:
        project = state / "project"
        project.mkdir()
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO_ROOT / name, project / name)
        write_overrides(project / "params.yaml", tiny_run(small_mirror, tiny_teacher))
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.flow"],
            cwd=project,
            env=user_env(state),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        (state / "flow.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]

    return built_once(shared_dir, "flowed_pipeline", build)


@pytest.fixture
def flowed(flowed_pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the flowed project, as the working directory."""
    project = copy_state(flowed_pipeline / "project", tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    return project


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


SLOW_DIRECTORIES = ("servers", "benchmarks", "pipeline", "reliability")  # the order they start in


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` mark comes from where a test lives: tests/pipeline, servers, reliability and benchmarks are slow,
    tests/unit is the fast tier. A test in tests/unit that marks itself slow belongs in one of those instead.

    The slow directories run first, so that pytest-xdist's workers end on many short tests rather than one waiting
    for the other's long one."""
    tests = Path(__file__).parent
    where = {item: item.path.relative_to(tests).parts[0] for item in items}
    for item in items:
        if where[item] in SLOW_DIRECTORIES:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow"):
            directories = ", ".join(f"tests/{name}" for name in SLOW_DIRECTORIES)
            raise pytest.UsageError(
                f"{item.nodeid} is marked slow: move it out of tests/unit, into one of {directories}"
            )
    rank = {name: index for index, name in enumerate(SLOW_DIRECTORIES)}
    items.sort(key=lambda item: rank.get(where[item], len(rank)))
