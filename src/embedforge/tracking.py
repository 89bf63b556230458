"""MLflow: one run per stage, nested under one parent run per pipeline invocation.

Every run carries the resolved params under their dotted names, the git
commit, and content hashes of the stage's inputs as tags, so any number in the
MLflow UI leads back to exact data and code. Stages started by ``dvc repro``
run in their own processes; they find their parent through the environment
variable ``EMBEDFORGE_PARENT_RUN_ID`` that ``embedforge run`` sets.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

from embedforge.config import Params, flatten
from embedforge.files import sha256_tree
from embedforge.memory import PeakMemory
from embedforge.redact import redact, redacted

PARENT_RUN_ENV = "EMBEDFORGE_PARENT_RUN_ID"
OFFLINE_DIR = Path("mlruns/offline")
MODEL_HASH_TAG = "embedforge.model_sha256"
DEFAULT_STORE_DIR = Path("mlruns")
SQLITE_PREFIX = "sqlite:///"
MAX_PARAM_CHARS = 6000

log = logging.getLogger(__name__)
_current: ContextVar[StageRun | None] = ContextVar("embedforge_stage_run", default=None)
_warned_offline = False


class QuietWhenTrackingFails(logging.Filter):
    """Drop what libraries repeat when the tracking server is gone (urllib3 retrying MLflow requests, MLflow's
    system-metrics thread failing to reach the run or to flush to it): the one warning to read is ours."""

    NOISE: ClassVar[dict[str, tuple[str, ...]]] = {
        "urllib3.connectionpool": ("Retrying",),
        "mlflow.system_metrics.system_metrics_monitor": ("Failed to", "Error terminating system metrics"),
    }

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "urllib3.connectionpool" and "/api/2.0/mlflow/" not in message:
            return True  # someone else's request
        return not message.startswith(self.NOISE.get(record.name, ()))


QUIET_WHEN_TRACKING_FAILS = QuietWhenTrackingFails()


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking call raises when the store or server fails (imported only once tracking is on): a
    corrupted or locked sqlite store raises SQLAlchemy's errors."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, requests.RequestException, OSError, SQLAlchemyError)


def is_refused_input(error: BaseException) -> bool:
    """MLflow refusing a name or value is a bug to fix, not a failed server to work around."""
    return getattr(error, "error_code", None) == "INVALID_PARAMETER_VALUE"


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

    uri = redact(mlflow.get_tracking_uri())
    try:
        run = mlflow.get_run(run_id)
    except tracking_errors():  # the server went away: the link can wait, the flow run must not fail on it
        return None
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri} (`mlflow ui --backend-store-uri {uri}`)"


class OfflineLog:
    """Where a run's records go when the tracking server cannot be reached: JSON lines under mlruns/offline/."""

    def __init__(self, run_name: str):
        OFFLINE_DIR.mkdir(parents=True, exist_ok=True)
        self.path = OFFLINE_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{run_name}.jsonl"

    def write(self, kind: str, payload: dict[str, Any], step: int | None = None) -> None:
        record = {"time": time.time(), "kind": kind, "step": step, "values": payload}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def first_cause(error: BaseException) -> str:
    """The first line of the innermost error behind ``error``: the database's or the socket's own words (MLflow
    wraps SQLAlchemy's errors in messages whose first line may be SQLAlchemy's note on autoflush)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def warn_offline_once(uri: str, error: BaseException, offline: OfflineLog) -> None:
    global _warned_offline
    if not _warned_offline:
        log.warning(
            "MLflow tracking at %s is unreachable or failing (%s): the pipeline goes on and keeps its records in %s",
            redact(uri),
            redact(first_cause(error))[:200],
            offline.path.parent,
        )
        _warned_offline = True


class StageRun:
    """What a stage may record while it runs; a no-op when tracking is off.

    When the tracking server stops answering, the run carries on offline: the first
    failure warns (once per process) and everything after it goes to an OfflineLog.
    """

    def __init__(self, mlflow: Any | None, run_name: str = "", uri: str = ""):
        self._mlflow = mlflow
        self._run_name, self._uri = run_name, uri
        self.offline: OfflineLog | None = None
        self.run_id: str | None = mlflow.active_run().info.run_id if mlflow else None

    def go_offline(self, error: BaseException) -> None:
        self._mlflow = None
        self.offline = self.offline or OfflineLog(self._run_name)
        warn_offline_once(self._uri, error, self.offline)
        stop_system_metrics(self.run_id)  # its thread would warn at every sample it cannot send

    def _record(self, kind: str, payload: dict[str, Any], call: Any, step: int | None = None) -> None:
        if self._mlflow is not None:
            try:
                call()
                return
            except tracking_errors() as error:
                if is_refused_input(error):
                    raise
                self.go_offline(error)
        if self.offline is not None:
            self.offline.write(kind, payload, step)

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {key: str(value)[:MAX_PARAM_CHARS] for key, value in params.items()}
        self._record("params", flat, lambda: self._mlflow.log_params(flat))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if metrics:
            values = {key: float(value) for key, value in metrics.items()}
            self._record("metrics", values, lambda: self._mlflow.log_metrics(values, step=step), step)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        if self._mlflow and path.exists():
            log_one = self._mlflow.log_artifacts if path.is_dir() else self._mlflow.log_artifact
            self._record("artifact", {"path": str(path)}, lambda: log_one(str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._record(
            "text", {"artifact_file": artifact_file, "text": text}, lambda: self._mlflow.log_text(text, artifact_file)
        )

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record("tags", tags, lambda: self._mlflow.set_tags(tags))

    def log_sentence_transformer(self, model: Any, name: str, registered_model: str | None, model_hash: str) -> None:
        """The model in MLflow's sentence-transformers flavour, loadable with ``mlflow.sentence_transformers``,
        and a new version of ``registered_model`` in the Model Registry tagged with ``model_hash`` (the saved
        directory's content hash), by which evaluate later finds the version to tag with its numbers.

        The requirements are the installed versions, given rather than inferred: inference
        re-imports the model in a subprocess, which takes longer than the logging itself.
        Offline, the record names the saved directory's hash, to find the version to upload later.
        """
        payload = {"name": name, "registered_model": registered_model, MODEL_HASH_TAG: model_hash}
        if not self._mlflow:
            self._record("model", payload, None)
            return
        from importlib.metadata import version

        import mlflow.sentence_transformers

        requirements = [
            f"{package}=={version(package)}" for package in ("sentence-transformers", "torch", "transformers")
        ]

        def log() -> None:
            info = mlflow.sentence_transformers.log_model(
                model, name=name, pip_requirements=requirements, registered_model_name=registered_model
            )
            if registered_model:
                self._mlflow.MlflowClient().set_model_version_tag(
                    registered_model, info.registered_model_version, MODEL_HASH_TAG, model_hash
                )

        self._record("model", payload, log)

    def tag_model_version(self, registered_model: str | None, model_hash: str, tags: dict[str, str]) -> None:
        """Put ``tags`` on the registered version whose saved directory had ``model_hash``, if there is one."""
        if not registered_model:
            return
        if not self._mlflow:
            self._record("model_version_tags", {MODEL_HASH_TAG: model_hash, **tags}, None)
            return

        def tag() -> None:
            client = self._mlflow.MlflowClient()
            versions = client.search_model_versions(f"name = '{registered_model}'")
            for found in versions:
                if found.tags.get(MODEL_HASH_TAG) == model_hash:
                    for key, value in tags.items():
                        client.set_model_version_tag(registered_model, found.version, key, value)

        self._record("model_version_tags", tags, tag)


def current() -> StageRun:
    """The run ``start`` opened in this thread (a no-op one when tracking is off): what a stage logs through."""
    return _current.get() or StageRun(None)


def server_unreachable(uri: str, timeout_s: float) -> BaseException | None:
    """For an http(s) tracking URI: the error of a bounded health check, or None when the server answers."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        return error
    return None


def open_run(
    mlflow: Any, cfg: Params, run_name: str, uri: str, tags: dict[str, str], parent_run_id: str | None
) -> StageRun:
    """Start the MLflow run, or an offline one when the server cannot be reached within tracking.timeout_s."""
    run = StageRun(None, run_name, uri)
    error = server_unreachable(uri, cfg.tracking.timeout_s)
    if error is None:
        try:
            mlflow.start_run(
                run_name=run_name,
                experiment_id=_experiment_id(mlflow, cfg.tracking.experiment, uri),
                parent_run_id=parent_run_id or os.environ.get(PARENT_RUN_ENV),
                nested=mlflow.active_run() is not None,
                tags=tags,
                log_system_metrics=True,  # CPU, memory, disk, network every 10 s; short peaks: PeakMemory
            )
            return StageRun(mlflow, run_name, uri)
        except tracking_errors() as failure:
            error = failure
    run.go_offline(error)
    run.set_tags(tags)
    return run


@contextmanager
def start(cfg: Params, run_name: str, inputs: list[Path] = (), parent_run_id: str | None = None) -> Iterator[StageRun]:
    """An MLflow run for one stage (or the pipeline parent) with params, lineage tags, wall time and peak memory.

    A tracking server that cannot be reached never stops the work: the run goes offline (see StageRun). Only
    rank 0 of a distributed training world records anything: the others would only repeat it.
    """
    if not cfg.tracking.enabled or os.environ.get("RANK", "0") != "0":
        yield StageRun(None)
        return
    import mlflow

    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    if uri.startswith(SQLITE_PREFIX):
        Path(uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
    else:  # a server: bounded waits instead of MLflow's minutes of retries
        if redact(uri) != uri:  # MLflow prints each run's URL, credentials and all
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.tracking.timeout_s)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        for noisy in QuietWhenTrackingFails.NOISE:
            logging.getLogger(noisy).addFilter(QUIET_WHEN_TRACKING_FAILS)
    mlflow.set_tracking_uri(uri)
    tags = {"embedforge.stage": run_name, **lineage_tags()}
    tags.update({f"input.{path}": sha256_tree(path) for path in inputs if path.exists()})
    run = open_run(mlflow, cfg, run_name, uri, tags, parent_run_id)
    token = _current.set(run)
    run.log_params(flatten(redacted(cfg.to_dict())))
    memory = PeakMemory().start()
    started = time.perf_counter()
    status = "FINISHED"
    try:
        yield run
    except BaseException as exc:
        status = "FAILED"
        run.set_tags({"error": str(exc)[:5000]})
        raise
    finally:
        memory.stop()
        run.log_metrics({"wall_time_s": time.perf_counter() - started, **memory.metrics()})
        _current.reset(token)
        if run.run_id is not None:  # an MLflow run was started, even if it went offline since
            end_run(mlflow, run, status)


@contextmanager
def attach(cfg: Params, run_id: str | None) -> Iterator[StageRun]:
    """Log into the run another process opened (a distributed train's launcher), leaving it to that process to end;
    without ``run_id`` (the other ranks of a world) nothing is logged."""
    if not (cfg.tracking.enabled and run_id):
        yield StageRun(None)
        return
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_id=run_id)
    run = StageRun(mlflow, "train", uri)
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)


def stop_system_metrics(run_id: str | None) -> None:
    """Stop a run's system-metrics sampler: ``mlflow.end_run`` stops it only after telling the server, so a
    dead server would leave that thread polling for the rest of the process."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    monitor = run_id_to_system_metrics_monitor.pop(run_id, None)
    if monitor is not None:
        monitor.finish()


def end_run(mlflow: Any, run: StageRun, status: str) -> None:
    stop_system_metrics(run.run_id)
    try:
        mlflow.end_run(status)
    except tracking_errors() as error:
        if run.offline is None:
            run.go_offline(error)
