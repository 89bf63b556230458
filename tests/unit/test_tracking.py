import logging
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from embedforge import tracking
from embedforge.errors import UserError
from embedforge.files import sha256_tree
from embedforge.stages import run_stage


def runs_by_name(uri: str) -> dict:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("embedforge")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_stage_run_logs_dotted_params_metrics_memory_and_lineage(project, mirror_params):
    cfg = mirror_params("tracking.enabled=true", "download.limit=10")
    run_stage("download", cfg)

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    run = runs_by_name(uri)["download"]
    assert run.info.status == "FINISHED"
    assert run.data.params["download.limit"] == "10"
    assert run.data.params["download.datasets.snli.hub_id"] == "stanfordnlp/snli"
    assert run.data.metrics["rows.snli.train"] == 10
    assert run.data.metrics["wall_time_s"] > 0 and run.data.metrics["peak_rss_mb"] > 50
    assert {"git.commit", "git.dirty", "embedforge.stage"} <= set(run.data.tags)


def test_stage_runs_nest_under_the_pipeline_parent_across_processes(project, mirror_params, monkeypatch):
    cfg = mirror_params("tracking.enabled=true", "download.limit=10")
    with tracking.start(cfg, "pipeline") as parent:
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)
        run_stage("download", cfg)
        run_stage("validate", cfg)

    runs = runs_by_name(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    for stage in ("download", "validate"):
        assert runs[stage].data.tags["mlflow.parentRunId"] == parent.run_id
    assert runs["validate"].data.tags["input.data/raw"] == sha256_tree(project / "data" / "raw")


def test_failed_stage_is_recorded_as_failed_with_its_error(project, mirror_params):
    cfg = mirror_params("tracking.enabled=true", f"download.mirror={project / 'missing'}")
    with pytest.raises(UserError):
        run_stage("download", cfg)
    run = runs_by_name(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")["download"]
    assert run.info.status == "FAILED"
    assert "does not exist" in run.data.tags["error"]


def test_tracking_uri_param_beats_environment(project, mirror_params, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert tracking.tracking_uri(mirror_params()) == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    explicit = f"sqlite:///{tmp_path / 'param.db'}"
    cfg = mirror_params("tracking.enabled=true", f"tracking.uri={explicit}", "download.limit=5")
    run_stage("download", cfg)
    assert runs_by_name(explicit)["download"].data.metrics["rows.total"] > 0
    default_store = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert default_store.get_experiment_by_name("embedforge") is None


def test_a_name_mlflow_refuses_is_raised_not_hidden_as_an_outage(project, mirror_params):
    with (
        pytest.raises(MlflowException, match="Names may only contain"),
        tracking.start(mirror_params("tracking.enabled=true"), "download") as run,
    ):
        run.log_metrics({"recall@1": 0.5})
    assert not (project / "mlruns/offline").exists()


def test_system_metrics_are_sampled_during_a_stage(project, mirror_params, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    with tracking.start(mirror_params("tracking.enabled=true"), "download"):
        time.sleep(3)
    run = runs_by_name(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")["download"]
    assert "system/cpu_utilization_percentage" in run.data.metrics


@pytest.mark.parametrize(
    ("logger", "message", "kept"),
    [
        ("mlflow.system_metrics.system_metrics_monitor", "Failed to log system metrics: connection refused", False),
        ("mlflow.system_metrics.system_metrics_monitor", "Error terminating system metrics monitoring process", False),
        ("mlflow.system_metrics.system_metrics_monitor", "Skip logging GPU metrics.", True),
        ("urllib3.connectionpool", "Retrying (Retry(total=4)) ... /api/2.0/mlflow/runs/log-batch", False),
        ("urllib3.connectionpool", "Retrying (Retry(total=4)) ... /some/other/api", True),
        ("embedforge.tracking", "MLflow tracking at http://x is unreachable or failing", True),
    ],
)
def test_what_libraries_repeat_about_a_lost_server_is_dropped_and_the_rest_kept(logger, message, kept):
    record = logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, None)
    assert tracking.QUIET_WHEN_TRACKING_FAILS.filter(record) is kept
