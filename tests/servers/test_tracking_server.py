"""Tracking against a real `mlflow server` on 127.0.0.1, and what happens when it is not there."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient
from team_stack import free_port

from embedforge import tracking
from embedforge.stages import run_stage

BIN = Path(sys.executable).parent


@pytest.fixture
def server(tmp_path):
    """A real MLflow tracking server on a free loopback port, stopped after the test."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server and its workers stop together
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if requests.get(f"{uri}/health", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert process.poll() is None, "mlflow server exited"
        time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not start within 2 minutes")
    yield uri, process
    stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(autouse=True)
def warn_again(monkeypatch):
    monkeypatch.setattr(tracking, "_warned_offline", False)


def offline_records(project: Path) -> list[dict]:
    return [json.loads(line) for path in (project / "mlruns/offline").glob("*.jsonl") for line in path.open()]


def test_stage_runs_nest_under_the_pipeline_run_on_a_real_server(project, mirror_params, server, monkeypatch):
    uri, _ = server
    cfg = mirror_params("tracking.enabled=true", f"tracking.uri={uri}", "download.limit=10")
    with tracking.start(cfg, "pipeline") as parent:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
        run_stage("download", cfg)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert by_name["download"].data.tags["mlflow.parentRunId"] == parent.run_id
    assert by_name["download"].data.metrics["rows.total"] > 0 and by_name["pipeline"].info.status == "FINISHED"
    assert not (project / "mlruns/offline").exists()


def test_an_unreachable_server_warns_once_and_keeps_the_metrics_locally(project, mirror_params, caplog):
    cfg = mirror_params("tracking.enabled=true", f"tracking.uri=http://127.0.0.1:{free_port()}", "download.limit=10")
    with caplog.at_level(logging.WARNING, logger="embedforge.tracking"):
        results = run_stage("download", cfg)
        run_stage("validate", cfg)
    assert caplog.text.count("is unreachable or failing") == 1
    records = offline_records(project)
    metrics = {key: value for r in records if r["kind"] == "metrics" for key, value in r["values"].items()}
    assert metrics["rows.total"] == results["rows.total"] and "validate.failed_expectations" in metrics
    assert any(r["kind"] == "params" and r["values"]["download.limit"] == "10" for r in records)


def test_a_server_that_dies_mid_run_does_not_stop_the_stage(project, mirror_params, server, caplog):
    uri, process = server
    cfg = mirror_params("tracking.enabled=true", f"tracking.uri={uri}")
    with caplog.at_level(logging.WARNING, logger="embedforge.tracking"), tracking.start(cfg, "train") as run:
        run.log_metrics({"train.loss": 1.0}, step=1)
        stop(process)
        run.log_metrics({"train.loss": 0.5}, step=2)
        run.log_metrics({"train.loss": 0.25}, step=3)
    assert run.offline is not None and caplog.text.count("is unreachable or failing") == 1
    assert mlflow.active_run() is None  # ended, so the next run does not nest under it
    assert tracking.run_link(run.run_id) is None
    assert not any(thread.name.startswith("SystemMetricsMonitor") for thread in threading.enumerate())
    losses = [(r["step"], r["values"]["train.loss"]) for r in offline_records(project) if "train.loss" in r["values"]]
    assert losses == [(2, 0.5), (3, 0.25)]
