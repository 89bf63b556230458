"""The team setup on real servers: a DVC remote on S3 (moto), and MLflow on PostgreSQL with S3 artifacts.

One tiny pipeline run in a git + DVC clone is tracked on the team's MLflow server and pushed to the
S3 remote; a colleague's fresh clone pulls it and has nothing left to run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import pytest
from helpers import make_clone, sh, tiny_pipeline
from mlflow.tracking import MlflowClient
from team_stack import BUCKET, S3_CREDENTIALS, MlflowServer, TeamStack, postgres_bindir

from embedforge import tracking
from embedforge.api import load_sentence_transformer
from embedforge.files import sha256_tree
from embedforge.stages import train

pytestmark = [
    pytest.mark.skipif(
        postgres_bindir() is None, reason="no PostgreSQL server binaries: apt-get install postgresql-15"
    ),
    pytest.mark.xdist_group("team"),  # one worker runs them all, so its session fixtures below start once
]
STAGES = ("download", "validate", "precompute", "tokenize", "train", "evaluate", "export", "report")
SENTENCES = ["A man is playing a guitar.", "Two dogs run through the snow.", "The stock market fell today."]


@pytest.fixture(scope="session")
def stack():
    team = TeamStack.up()
    yield team
    team.down()


@pytest.fixture(scope="session")
def team_project(stack, small_mirror, tiny_teacher, tmp_path_factory):
    """A colleague's project: tracked on the team server, its outputs pushed to the team's S3 remote."""
    overrides = [*tiny_pipeline(tiny_teacher), "train.log_every_steps=1", f"tracking.uri={stack.mlflow.uri}"]
    repo, env = make_clone(tmp_path_factory.mktemp("team") / "repo", small_mirror, overrides)
    env = {**env, **S3_CREDENTIALS, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    first = sh("embedforge", "run", cwd=repo, env=env)
    second = sh("embedforge", "run", "--set", "report.title=Team report", cwd=repo, env=env)  # a run to diff against
    sh("embedforge", "remote", "add", "team", f"s3://{BUCKET}/dvc", "--endpoint-url", stack.s3.endpoint_url,
       cwd=repo, env=env)  # fmt: skip
    sh("git", "add", "dvc.lock", "params.yaml", "metrics", "plots", ".dvc/config", cwd=repo, env=env)
    sh("git", "commit", "-qm", "a tiny pipeline run", cwd=repo, env=env)
    pushed = sh("embedforge", "push", cwd=repo, env=env)
    return repo, env, first.stdout + second.stdout, pushed.stdout


def test_a_fresh_clone_pulls_the_outputs_and_has_nothing_to_rerun(team_project, stack, tmp_path):
    repo, env, _, pushed = team_project
    assert "pushed" in pushed, pushed
    keys = [item["Key"] for item in stack.s3.client().list_objects_v2(Bucket=BUCKET, Prefix="dvc/")["Contents"]]
    assert any(key.startswith("dvc/runs/") for key in keys), "the run cache was not pushed"

    clone = tmp_path / "colleague"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    clone_env = {**env, "PYTHONPATH": str(clone / "src")}
    assert not (clone / "data/embeddings").exists() and not (clone / "models/student").exists()
    sh("embedforge", "pull", cwd=clone, env=clone_env)

    status = sh("dvc", "status", cwd=clone, env=clone_env).stdout
    assert "Data and pipelines are up to date." in status, status
    rerun = sh("dvc", "repro", cwd=clone, env=clone_env).stdout
    assert "Running stage" not in rerun, rerun
    for output in ("data/embeddings", "data/tokens", "checkpoints/best", "models/student", "reports/index.html"):
        assert (clone / output).exists(), output
    ours, theirs = (load_sentence_transformer(root / "models/student") for root in (repo, clone))
    assert (ours.encode(SENTENCES) == theirs.encode(SENTENCES)).all()


def test_the_pipeline_is_tracked_on_the_postgres_and_s3_server(team_project, stack):
    repo, env, _, _ = team_project
    client = MlflowClient(stack.mlflow.uri)
    experiment = client.get_experiment_by_name("embedforge")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if run.info.run_name == "pipeline"]
    assert len(parents) == 2 and all(run.info.status == "FINISHED" for run in runs)
    children = {
        run.info.run_name: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert set(children) == set(STAGES)

    train = children["train"]
    assert train.data.params["train.batch_size"] == "8" and train.data.params["model.hidden_size"] == "64"
    assert len(client.get_metric_history(train.info.run_id, "step.loss")) > 1
    assert "system/cpu_utilization_percentage" in train.data.metrics
    assert train.data.metrics["peak_rss_mb"] > 50

    report = children["report"]
    assert report.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server, to S3"
    page = mlflow.artifacts.download_artifacts(
        run_id=report.info.run_id, artifact_path="report/index.html", tracking_uri=stack.mlflow.uri
    )
    assert "embedforge report" in Path(page).read_text(encoding="utf-8")
    keys = [item["Key"] for item in stack.s3.client().list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert f"mlflow/{experiment.experiment_id}/{report.info.run_id}/artifacts/report/index.html" in keys
    assert any(key.endswith("/model/MLmodel") or "/models/" in key for key in keys), "the student is not in S3"

    [version] = client.search_model_versions("name = 'embedforge-student'")
    assert version.run_id == train.info.run_id
    assert float(version.tags["eval.sts.stsb/validation.spearman"]) == pytest.approx(
        children["evaluate"].data.metrics["eval.student.sts.stsb/validation.spearman"]
    )
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.mlflow.uri)  # models:/ resolves through the tracking server
    try:
        model = mlflow.sentence_transformers.load_model(f"models:/embedforge-student/{version.version}")
    finally:
        mlflow.set_tracking_uri(before)
    assert model.encode(SENTENCES).shape[0] == len(SENTENCES)

    listed = sh("embedforge", "runs", cwd=repo, env=env).stdout
    assert parents[0].info.run_id[:8] in listed and parents[1].info.run_id[:8] in listed, listed
    diff = sh("embedforge", "runs", "--diff", parents[0].info.run_id[:8], parents[1].info.run_id[:8], cwd=repo, env=env)
    assert "report.title" in diff.stdout and "Team report" in diff.stdout, diff.stdout


def test_a_team_server_stopped_mid_training_leaves_the_run_finished_and_offline(
    stack, ready, project, caplog, monkeypatch, request
):
    """The server goes away after the first step: training finishes, the rest is kept in mlruns/offline."""
    server = MlflowServer.start(
        stack.postgres.create_database("stopped_mid_run"), f"s3://{BUCKET}/stopped", project, stack.s3.endpoint_url
    )
    request.addfinalizer(server.stop)  # when the test fails before the first step stops it
    cfg = ready("tracking.enabled=true", f"tracking.uri={server.uri}")
    monkeypatch.setattr(tracking, "_warned_offline", False)
    with caplog.at_level(logging.WARNING), tracking.start(cfg, "train") as run:
        results = train.run(cfg, on_step=lambda record: server.stop() if record.step == 1 else None)
    assert results["result.steps"] > 1 and (project / "models/student/modules.json").is_file()
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert run.offline is not None and [record.name for record in warnings] == ["embedforge.tracking"], caplog.text
    assert "is unreachable or failing" in warnings[0].getMessage()
    records = [json.loads(line) for path in (project / "mlruns/offline").glob("*.jsonl") for line in path.open()]
    steps = [record["step"] for record in records if "step.loss" in record["values"]]
    assert steps and min(steps) > 1, "the steps after the server stopped are kept offline"
    [model] = [record["values"] for record in records if record["kind"] == "model"]
    assert model[tracking.MODEL_HASH_TAG] == sha256_tree(project / "models/student"), "which version to upload later"
    assert mlflow.active_run() is None
