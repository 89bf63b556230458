"""The pipeline as a Prefect 3 flow: the same stage functions as tasks, and unchanged stages skipped.

Each stage is one task calling ``run_stage`` (no second implementation). A task's
cache key is the fingerprint of what dvc.yaml declares for its stage (deps'
contents, params' values and the project directory; see ``dvcfile``), with
results persisted in Prefect's result store, so a second flow run with nothing
changed runs no stage, and changing ``train.lr`` re-runs train, evaluate and report only. A stage whose
outputs are gone runs whatever its key says. precompute and tokenize run
concurrently, both needing only validate. Tasks run in worker processes
(``ProcessPoolTaskRunner``), never in threads of one process: two stages importing
transformers' lazy modules at once in one process fail (a concurrent circular
import hands one thread a half-initialised module), and a stage's peak memory,
torch threads and environment must be its own. download retries with backoff; a
deterministic failure (bad params, failed validation) is never retried. Each run
ends with a markdown artifact: the evaluation summary and the MLflow run.

With ``dask_address`` the stage tasks run on that Dask cluster instead
(prefect-dask's ``DaskTaskRunner``). It is a flow parameter, not a decorator
option, so a schedule or deployment can pass it. The cluster's workers need
embedforge installed, must run in the project directory (stages read and write it
by relative path) and, for the reason above, with one thread each
(``dask worker ADDRESS --nthreads 1``); they get the same environment as the
flow's own worker processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The ephemeral Prefect server inherits this: its telemetry heartbeat phones home, and its first write races the
# flow's on the fresh sqlite store ("database is locked" tracebacks in a run that succeeds).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect waits 20 s for that server to answer; on a busy 2-core machine a fresh process's server takes longer, and
# the flow fails before its first task ("Timed out while attempting to connect to ephemeral Prefect API server").
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.context import TaskRunContext, get_run_context
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner
from prefect.tasks import exponential_backoff
from prefect.types.entrypoint import EntrypointType

from embedforge import dvcfile, tracking
from embedforge.config import load_params
from embedforge.errors import UserError
from embedforge.paths import EVAL_METRICS_PATH, FLOW_CACHE_DIR
from embedforge.report.markdown import evaluation_summary
from embedforge.runlock import pipeline_lock
from embedforge.stages import run_stage

FLOW_NAME = "embedforge-pipeline"
SERVER_START_TIMEOUT_S = 120
DASK_CONNECT_TIMEOUT = "5s"

log = logging.getLogger(__name__)


def stage_cache_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    """The stage's dvc.yaml fingerprint: the content of its deps and the values of its params."""
    cfg = load_params(inputs["params_path"], inputs["overrides"])
    name = inputs["name"]
    return f"{name}-{dvcfile.fingerprint(dvcfile.stage_spec(name), cfg, Path.cwd())}"


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may go away by itself: a user error (params, data, validation) will not."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


# The results, and so the cache, live in the project directory (a relative path, resolved where the task runs):
# a copied or moved project keeps its cache, and one project's cache never answers for another's outputs.
@task(
    cache_key_fn=stage_cache_key,
    persist_result=True,
    result_storage=FLOW_CACHE_DIR,
    task_run_name="{name}",
)
def stage_task(name: str, params_path: str, overrides: list[str]) -> dict[str, float | str]:
    return run_stage(name, load_params(params_path, overrides))


def submit(runner: TaskRunner, name: str, params_path: str, overrides: list[str], **options: Any) -> Any:
    """Submit one stage's task to ``runner``, forcing a run when dvc.yaml's outputs of the stage are missing.

    This is what ``Task.submit`` does with the flow run's own runner; here the runner may be a Dask cluster's.
    """
    refresh = not dvcfile.outputs_present(dvcfile.stage_spec(name), Path.cwd())
    configured = stage_task.with_options(refresh_cache=refresh, **options)
    return runner.submit(configured, {"name": name, "params_path": params_path, "overrides": overrides})


def worker_variables(parent_run_id: str | None) -> dict[str, str]:
    """What the task workers need from the flow's process: the flow's MLflow run (stage runs nest under it) and
    this flow run's Prefect API. Without PREFECT_API_URL the flow runs on an ephemeral server, and each worker
    would start one more on the same sqlite database."""
    wanted = {PREFECT_API_URL.name: os.environ.get(PREFECT_API_URL.name) or str(get_run_context().client.api_url)}
    if parent_run_id:
        wanted[tracking.PARENT_RUN_ENV] = parent_run_id
    return wanted


def export_variables(variables: dict[str, str]) -> None:
    """Run on each Dask worker: ``worker_variables`` there, as the flow's own worker processes inherit them."""
    os.environ.update(variables)


@contextmanager
def exported(wanted: dict[str, str]) -> Iterator[None]:
    """``wanted`` in this process's environment while the block runs, for the processes it starts."""
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def stage_runner(dask_address: str | None, parent_run_id: str | None) -> Iterator[TaskRunner]:
    """Where the stage tasks run: the flow's own worker processes, or the Dask cluster at ``dask_address``,
    connected now so that an unreachable scheduler fails the flow before any stage, naming it."""
    if not dask_address:
        with exported(worker_variables(parent_run_id)):
            yield get_run_context().task_runner
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(address=dask_address, client_kwargs={"timeout": DASK_CONNECT_TIMEOUT}) as runner:
        try:
            runner.client.run(export_variables, worker_variables(parent_run_id))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"dask_address: no Dask scheduler answered at {dask_address!r} ({exc}); start one (`dask scheduler`, "
                f"and `dask worker ADDRESS --nthreads 1` in the project directory) or leave dask_address out"
            ) from None
        yield runner


@flow(name=FLOW_NAME, task_runner=ProcessPoolTaskRunner(max_workers=2))  # two: precompute beside tokenize
def pipeline(
    params: str = "params.yaml",
    preset: str | None = None,
    overrides: list[str] | None = None,
    dask_address: str | None = None,
) -> dict:
    """Every stage, in order; returns every stage's results by stage name. With ``dask_address`` (a Dask scheduler,
    e.g. tcp://10.0.0.5:8786) the stage tasks run on that cluster's workers."""
    settings = [*([f"preset={preset}"] if preset else []), *(overrides or [])]
    cfg = load_params(params, settings)
    results: dict[str, dict[str, float | str]] = {}
    with (
        pipeline_lock(f"Prefect flow run {flow_run.get_id()}"),
        tracking.start(cfg, "pipeline") as parent,
        stage_runner(dask_address, parent.run_id) as runner,
    ):
        results["download"] = submit(
            runner,
            "download",
            params,
            settings,
            retries=2,
            retry_delay_seconds=exponential_backoff(10),
            retry_condition_fn=is_transient,
        ).result()
        results["validate"] = submit(runner, "validate", params, settings).result()
        side_by_side = {name: submit(runner, name, params, settings) for name in ("precompute", "tokenize")}
        results.update({name: future.result() for name, future in side_by_side.items()})
        for name in ("train", "evaluate", "export", "report"):
            results[name] = submit(runner, name, params, settings).result()
        evaluation = json.loads(EVAL_METRICS_PATH.read_text(encoding="utf-8"))
        create_markdown_artifact(
            evaluation_summary(evaluation, tracking.run_link(parent.run_id)),
            key="evaluation-summary",
            description="The student against its teacher, from metrics/eval.json",
        )
    return results


def deploy(name: str, pool: str, parameters: dict[str, Any], cron: str | None, interval: float | None) -> str:
    """Register the flow on the Prefect server as a deployment run by the workers of ``pool``, in this directory.

    The flow is found by module path (the installed embedforge, no code upload) and runs with this project
    directory as its working directory, so params.yaml, dvc.yaml and data/ are the ones the user deployed from.
    """
    deployment_id = pipeline.deploy(
        name=name,
        work_pool_name=pool,
        parameters=parameters,
        cron=cron,
        interval=interval,
        job_variables={"working_dir": str(Path.cwd())},
        # one run at a time, the next one queued: two in one project directory would refuse (runlock)
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        entrypoint_type=EntrypointType.MODULE_PATH,
        build=False,
        push=False,
        print_next_steps=False,
    )
    return str(deployment_id)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"prefect server exited with code {server.returncode}; its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"prefect server did not answer on {url} within {SERVER_START_TIMEOUT_S} s; its log: {log_path}")


@contextmanager
def api_server(home: Path | None = None) -> Iterator[str]:
    """The Prefect API a schedule needs: PREFECT_API_URL when set, else a `prefect server start` of our own.

    Prefect's ephemeral API (what a process without PREFECT_API_URL gets) runs no scheduler service, so a
    schedule served against it is registered and never fires. Our server listens on 127.0.0.1 only, keeps its
    database in PREFECT_HOME (``home`` overrides it), and stops when the block ends.
    """
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    port = _free_loopback_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **({"PREFECT_HOME": str(home)} if home else {})}
    log_path = Path(env.get("PREFECT_HOME", Path.home() / ".prefect")) / "embedforge-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("a", encoding="utf-8") as server_log:
        server = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_healthy(url, server, log_path)
        log.info(
            "Prefect server (scheduler included) on %s, UI %s; its log: %s", url, url.removesuffix("/api"), log_path
        )
        # exported too: the flow runs the schedule starts read the URL from their environment at import, and a
        # flow-run process without it has Prefect's threads start ephemeral servers as the run ends (two at once:
        # one is left running after the run)
        with temporary_settings({PREFECT_API_URL: url}), exported({PREFECT_API_URL.name: url}):
            yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its service workers stop together
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
