"""MLflow: one run per stage, nested under one parent run per pipeline invocation.

Every run carries the resolved params under their dotted names, the git
commit, and content hashes of the stage's inputs as tags, so any number in the
MLflow UI leads back to exact data and code. Stages started by ``dvc repro``
run in their own processes; they find their parent through the environment
variable ``EMBEDFORGE_PARENT_RUN_ID`` that ``embedforge run`` sets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embedforge.config import Params, flatten
from embedforge.memory import PeakMemory

PARENT_RUN_ENV = "EMBEDFORGE_PARENT_RUN_ID"
DEFAULT_STORE_DIR = Path("mlruns")
SQLITE_PREFIX = "sqlite:///"
MAX_PARAM_CHARS = 6000

log = logging.getLogger(__name__)


def tracking_uri(cfg: Params) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else a sqlite store in ./mlruns (no server needed)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"{SQLITE_PREFIX}{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def _experiment_id(mlflow: Any, name: str, uri: str) -> str:
    """The experiment's id, creating it with artifacts beside a sqlite store (MLflow would use ./mlruns)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith(SQLITE_PREFIX):
        artifact_location = (Path(uri.removeprefix(SQLITE_PREFIX)).parent / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def lineage_tags() -> dict[str, str]:
    """Git commit and dirty flag, and the Prefect flow run when a flow started this process's work."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
    }
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        if flow_run.get_id():
            tags["prefect.flow_run_id"] = str(flow_run.get_id())
    return tags


def run_link(run_id: str | None) -> str | None:
    """Where to see a run: the UI page on a tracking server, else how to open the local store."""
    if not run_id:
        return None
    import mlflow

    uri = mlflow.get_tracking_uri()
    run = mlflow.get_run(run_id)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri} (`mlflow ui --backend-store-uri {uri}`)"


def content_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``path`` (or of the file itself).

    Bytecode caches are left out: importing the code must not change its hash.
    """
    digest = hashlib.sha256()
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
    )
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _log_params(mlflow: Any, cfg: Params) -> None:
    flat = {key: str(value)[:MAX_PARAM_CHARS] for key, value in flatten(cfg.to_dict()).items()}
    mlflow.log_params(flat)


class StageRun:
    """What a stage may record while it runs; a no-op when tracking is off."""

    def __init__(self, mlflow: Any | None):
        self._mlflow = mlflow
        self.run_id: str | None = mlflow.active_run().info.run_id if mlflow else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._mlflow and metrics:
            self._mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        if self._mlflow and path.exists():
            if path.is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path)
            else:
                self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._mlflow:
            self._mlflow.set_tags(tags)

    def log_sentence_transformer(self, model: Any, name: str) -> None:
        """The model in MLflow's sentence-transformers flavour, loadable with ``mlflow.sentence_transformers``.

        The requirements are the installed versions, given rather than inferred: inference
        re-imports the model in a subprocess, which takes longer than the logging itself.
        """
        if not self._mlflow:
            return
        from importlib.metadata import version

        import mlflow.sentence_transformers

        requirements = [
            f"{package}=={version(package)}" for package in ("sentence-transformers", "torch", "transformers")
        ]
        mlflow.sentence_transformers.log_model(model, name=name, pip_requirements=requirements)


def current() -> StageRun:
    """The active run as a StageRun (a no-op one when tracking is off): what a stage logs steps through."""
    mlflow = sys.modules.get("mlflow")
    return StageRun(mlflow if mlflow is not None and mlflow.active_run() is not None else None)


@contextmanager
def start(cfg: Params, run_name: str, inputs: list[Path] = (), parent_run_id: str | None = None) -> Iterator[StageRun]:
    """An MLflow run for one stage (or the pipeline parent) with params, lineage tags, wall time and peak memory."""
    if not cfg.tracking.enabled:
        yield StageRun(None)
        return
    import mlflow

    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    if uri.startswith(SQLITE_PREFIX):
        Path(uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    tags = {"embedforge.stage": run_name, **lineage_tags()}
    tags.update({f"input.{path}": content_hash(path) for path in inputs if path.exists()})
    with mlflow.start_run(
        run_name=run_name,
        experiment_id=_experiment_id(mlflow, cfg.tracking.experiment, uri),
        parent_run_id=parent_run_id or os.environ.get(PARENT_RUN_ENV),
        nested=mlflow.active_run() is not None,
        tags=tags,
    ):
        _log_params(mlflow, cfg)
        run = StageRun(mlflow)
        memory = PeakMemory().start()
        started = time.perf_counter()
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("error", str(exc)[:5000])
            raise
        finally:
            memory.stop()
            run.log_metrics({"wall_time_s": time.perf_counter() - started, **memory.metrics()})
