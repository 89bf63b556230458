"""The flow as users run it: a fresh process, a served schedule that fires, and a worker on a real Prefect server.

Each test runs the product in its own subprocesses, so nothing imported by pytest hides what a fresh
process does (two stages importing transformers at once) and the Prefect API is a real server.
"""

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers import copy_state, tiny_run, user_env
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from embedforge.flow import api_server
from embedforge.stages import STAGES


def start_with_ctrl_c_deliverable(command: list[str], cwd: Path, env: dict[str, str], log) -> subprocess.Popen:
    """Start ``command`` so that SIGINT reaches it as Ctrl-C from a terminal would.

    A background job of a shell without job control (as in CI) has SIGINT ignored, which its children
    inherit, and Python then installs no KeyboardInterrupt handler. A handled signal is reset to the
    default on exec, an ignored one is not.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_with_ctrl_c(process: subprocess.Popen, log_path: Path) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{process.args} did not stop on SIGINT:\n{log_path.read_text()[-3000:]}")


def wait_for_deployment_run(deployment_name: str, process: subprocess.Popen, log_path: Path, timeout_s: float):
    """The deployment and its first flow run in a final state (or fail, showing the process's log)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-5000:]
            try:
                deployment = client.read_deployment_by_name(deployment_name)
            except ObjectNotFound:
                time.sleep(1)
                continue
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
            finished = [run for run in runs if run.state is not None and run.state.is_final()]
            if finished:
                return deployment, finished[0]
            time.sleep(2)
    pytest.fail(f"no run of {deployment_name} finished within {timeout_s:.0f} s:\n{log_path.read_text()[-5000:]}")


def server_url_in(log_path: Path, process: subprocess.Popen, timeout_s: float = 180) -> str:
    """The API URL of the Prefect server `embedforge schedule` started, from its log line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-5000:]
        for line in log_path.read_text().splitlines():
            if "Prefect server (scheduler included) on " in line:
                return line.split(" on ", 1)[1].split(",", 1)[0]
        time.sleep(1)
    pytest.fail(f"embedforge schedule started no Prefect server within {timeout_s:.0f} s:\n{log_path.read_text()}")


def stage_runs_under(project: Path, parent_run_id: str) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedforge").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def pipeline_runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedforge").experiment_id
    return client.search_runs([experiment], filter_string="attributes.run_name = 'pipeline'")


def test_the_flow_completes_its_first_run_in_a_fresh_process(flowed_pipeline, tmp_path):
    """Nothing imported beforehand: precompute and tokenize import their libraries side by side. The run is the one
    that made the flowed pipeline every later flow test starts from (tests/conftest.py)."""
    output = (flowed_pipeline / "flow.log").read_text()
    assert "Finished in state Completed()" in output and "Traceback" not in output, output[-5000:]
    assert output.count("Starting temporary server") == 1, output[-5000:]  # the task workers use the flow's
    project = copy_state(flowed_pipeline / "project", tmp_path / "project")
    [parent] = pipeline_runs(project)
    assert (project / "reports/index.html").is_file() and (project / ".flow-cache").is_dir()
    stages = {run.info.run_name: run.info for run in stage_runs_under(project, parent.info.run_id)}
    assert len(stages) == len(STAGES) == 8
    precompute, tokenize = stages["precompute"], stages["tokenize"]
    assert tokenize.start_time < precompute.end_time and precompute.start_time < tokenize.end_time, "side by side"


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """Every (host, port) a process and its children listen on."""
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {
        (connection.laddr.ip, connection.laddr.port)
        for process in tree
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }


def test_a_served_schedule_runs_the_flow_on_its_interval_until_stopped(flowed, small_mirror, tiny_teacher):
    """No PREFECT_API_URL, as a user first tries it: the ephemeral API would never fire the schedule.

    An interval schedule's first run comes one interval after it is served. It runs in the project it was served
    from, a copy of one where the flow has run: it finds that run's results there and runs no stage.
    """
    project, tiny = flowed, tiny_run(small_mirror, tiny_teacher)
    settings = [item for override in tiny for item in ("--set", override)]
    command = ["embedforge", "schedule", "--interval", "45", "--name", "every-45s", *settings]
    log_path = project / "schedule.log"  # a file, not a pipe: an unread pipe that fills up blocks the server
    started = time.monotonic()
    with log_path.open("w") as log:
        # the server's scheduler looks for deployments to schedule every 60 s by default: a minute of waiting
        env = {**user_env(project), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
        served = start_with_ctrl_c_deliverable(command, project, env, log)
        try:
            with temporary_settings({PREFECT_API_URL: server_url_in(log_path, served)}):
                deployment, run = wait_for_deployment_run("embedforge-pipeline/every-45s", served, log_path, 600)
            listening = listening_addresses(served.pid)
        finally:
            stop_with_ctrl_c(served, log_path)
    print(f"first scheduled run completed {time.monotonic() - started:.0f} s after `embedforge schedule` started")
    assert run.state.is_completed(), run.state.message
    assert listening and {host for host, _ in listening} == {"127.0.0.1"}, listening  # the server is not exposed
    assert [schedule.schedule.interval.total_seconds() for schedule in deployment.schedules] == [45]
    assert deployment.parameters == {"params": "params.yaml", "overrides": tiny}
    runs = pipeline_runs(project)
    [scheduled] = [parent for parent in runs if parent.data.tags["prefect.flow_run_id"] == str(run.id)]
    assert stage_runs_under(project, scheduled.info.run_id) == [], "a stage ran: the project's flow cache was missed"
    # the scheduled run used the schedule's server: no ephemeral one, which Prefect's threads used to start as a
    # run ended without the URL in its environment, two at once, one left running after `embedforge schedule`
    assert "Starting temporary server" not in log_path.read_text(), log_path.read_text()[-5000:]


def test_a_process_worker_runs_a_deployment_from_a_prefect_server(flowed, small_mirror, tiny_teacher):
    """In a copy of a project where the flow has run: the deployment's new report title re-runs the report stage
    alone, in the flow run the worker starts."""
    project, tiny = flowed, [*tiny_run(small_mirror, tiny_teacher), "report.title=Deployed report"]
    env = user_env(project)
    settings = [item for override in tiny for item in ("--set", override)]
    with api_server(home=project / "prefect-server-home") as url:
        env["PREFECT_API_URL"] = url
        for command in (
            ["prefect", "work-pool", "create", "local", "--type", "process"],
            ["embedforge", "deploy", "--pool", "local", "--name", "once", *settings],
            ["prefect", "deployment", "run", "embedforge-pipeline/once"],
        ):
            done = subprocess.run(
                command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert done.returncode == 0, done.stdout + done.stderr
        log_path = project / "worker.log"
        with log_path.open("w") as log:
            worker = start_with_ctrl_c_deliverable(["prefect", "worker", "start", "--pool", "local"], project, env, log)
            try:
                deployment, run = wait_for_deployment_run("embedforge-pipeline/once", worker, log_path, 600)
            finally:
                stop_with_ctrl_c(worker, log_path)
    assert run.state.is_completed(), f"{run.state.message}\n{log_path.read_text()[-5000:]}"
    assert deployment.global_concurrency_limit.limit == 1  # a second run waits for the first (see runlock)
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    [deployed] = [parent for parent in pipeline_runs(project) if parent.data.tags["prefect.flow_run_id"] == str(run.id)]
    assert [stage.info.run_name for stage in stage_runs_under(project, deployed.info.run_id)] == ["report"]
    assert "Deployed report" in (project / "reports/index.html").read_text()
