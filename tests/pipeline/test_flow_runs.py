"""The Prefect flow running the whole tiny pipeline against a temporary Prefect server (prefect_test_harness)."""

import re
import shutil

import pytest
from helpers import REPO_ROOT, pipeline_running_elsewhere
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.testing.utilities import prefect_test_harness

from embedforge.flow import pipeline
from embedforge.runs import RunLog
from embedforge.runs import diff as runs_diff
from embedforge.runs import table as runs_table
from embedforge.stages.precompute import local_cluster

STAGES = ["download", "validate", "precompute", "tokenize", "train", "evaluate", "export", "report"]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs(state) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return {run.name: run for run in runs}


def ran(runs: dict) -> set[str]:
    return {name for name, run in runs.items() if run.state.name != "Cached"}


def test_second_run_skips_everything_and_a_train_param_reruns_train_evaluate_export_report(harness, flowed):
    """In a copy of a project where the flow has run once (its first run: tests/servers/test_prefect_server.py)."""
    second = pipeline(return_state=True)
    assert second.is_completed() and ran(task_runs(second)) == set()

    third = pipeline(overrides=["train.lr=1e-3"], return_state=True)
    assert third.is_completed() and ran(task_runs(third)) == {"train", "evaluate", "export", "report"}
    with get_client(sync_client=True) as client:
        flow_run_filter = ArtifactFilterFlowRunId(any_=[third.state_details.flow_run_id])
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run_filter))
    assert [artifact.key for artifact in artifacts] == ["evaluation-summary"]
    summary = artifacts[0].data
    assert summary.startswith(("**Goals met:** The student keeps ", "**Goals missed:** The student keeps "))
    assert "| STS Spearman, stsb/validation |" in summary and "MLflow run: run " in summary

    client = MlflowClient(f"sqlite:///{flowed / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])
    parents = {run.info.run_id for run in runs if run.info.run_name == "pipeline"}
    stage_runs = [run for run in runs if run.info.run_name in STAGES]
    assert len(parents) == 3 and len(stage_runs) == 8 + 4
    assert {run.data.tags["mlflow.parentRunId"] for run in stage_runs} <= parents
    flow_run_ids = {run.data.tags["prefect.flow_run_id"] for run in runs}
    assert len(flow_run_ids) == 3 and {str(state.state_details.flow_run_id) for state in (second, third)} < flow_run_ids

    versions = client.search_model_versions("name = 'embedforge-student'")
    assert sorted(int(version.version) for version in versions) == [1, 2]  # one per training run
    for version in versions:
        assert float(version.tags["eval.speed_ratio"]) > 0 and "eval.sts.stsb/validation.spearman" in version.tags

    log = RunLog(f"sqlite:///{flowed / 'mlruns' / 'mlflow.db'}", "embedforge")
    table = runs_table(log, last=10)
    assert table["stages_run"].tolist() == [4, 0, 8]  # newest first: the lr change re-ran 4 stages, the repeat none
    assert isinstance(table["sts_spearman"][0], float) and table["sts_spearman"][1] == "-"
    assert table["peak_rss_mb"][0] > 0 and table["minutes"][2] > 0
    changes = runs_diff(log, table["run"][2], table["run"][0]).set_index("")
    assert changes.loc["train.lr"].tolist() == ["5e-05", "0.001"]
    assert "speed_ratio" in changes.index and "download.limit" not in changes.index


def test_missing_outputs_are_rebuilt_even_when_the_key_matches(harness, flowed):
    """In a copy of a project where the flow has run: the copy's own cache answers for every other stage."""
    shutil.rmtree(flowed / "reports")
    again = pipeline(return_state=True)
    assert ran(task_runs(again)) == {"report"} and (flowed / "reports/index.html").is_file()


def test_failed_validation_fails_the_flow_with_the_summary_and_is_not_retried(harness, project, tiny):
    state = pipeline(overrides=[*tiny, "validate.max_chars=5"], return_state=True)
    assert state.is_failed()
    assert "expect_column_value_lengths_to_be_between" in state.message or "max_chars" in state.message, state.message
    runs = task_runs(state)
    assert runs["validate"].run_count == 1 and "precompute" not in runs


def test_a_changed_preset_default_reruns_exactly_the_stages_that_read_it(harness, flowed, monkeypatch):
    """In a copy of a project where the flow has run. The stage tasks run in spawned worker processes, which import
    embedforge afresh from the parent's sys.path: from an edited copy here."""
    source = flowed / "edited-src"
    shutil.copytree(REPO_ROOT / "src/embedforge", source / "embedforge", ignore=shutil.ignore_patterns("__pycache__"))
    presets = source / "embedforge/config/presets.py"
    edited = re.sub(r'("development": \{.*?"train": \{)', r'\1"lr": 6e-05, ', presets.read_text(), count=1, flags=re.S)
    presets.write_text(edited)
    monkeypatch.syspath_prepend(str(source))
    again = pipeline(return_state=True)
    assert again.is_completed() and ran(task_runs(again)) == {"train", "evaluate", "export", "report"}


def test_the_flow_on_a_dask_cluster_runs_every_stage_there_and_trains_on_two_processes(harness, project, tiny):
    """precompute runs its shards on the same cluster from inside its stage task, which frees its worker's slot
    meanwhile: on a cluster of one worker it would otherwise wait on itself. The train task launches two
    training processes from its Dask worker."""
    with local_cluster(1) as cluster:
        address = cluster.scheduler_address
        overrides = [*tiny, f"precompute.dask_address={address}", "train.nproc_per_node=2"]
        state = pipeline(overrides=overrides, dask_address=address, return_state=True)
    assert state.is_completed(), state.message
    assert ran(task_runs(state)) == set(STAGES)
    results = state.result()
    assert results["precompute"]["precompute.workers_used"] == 1
    assert results["train"]["result.world_size"] == 2
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embedforge").experiment_id])
    parent = next(run.info.run_id for run in runs if run.info.run_name == "pipeline")
    assert {run.data.tags.get("mlflow.parentRunId") for run in runs if run.info.run_name in STAGES} == {parent}


def test_a_flow_run_refuses_while_another_pipeline_run_holds_the_project(harness, project, tiny):
    params_before = (project / "params.yaml").read_bytes()
    with pipeline_running_elsewhere(project) as holder:
        state = pipeline(overrides=tiny, return_state=True)
    assert state.is_failed(), state
    assert f"`embedforge run` (pid {holder.pid}" in state.message and "is running the pipeline" in state.message
    assert not (project / "data").exists() and (project / "params.yaml").read_bytes() == params_before
