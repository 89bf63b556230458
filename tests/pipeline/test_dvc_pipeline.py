"""A real `dvc repro` in a fresh git repository laid out like a clone of this project."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_clone, sh, tiny_pipeline
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def clone(tmp_path: Path, small_mirror: Path) -> tuple[Path, dict]:
    """The real teacher and preset, on less data and one epoch (the development preset trains for minutes)."""
    return make_clone(tmp_path / "repo", small_mirror, ["download.limit=1000", "train.epochs=1"])


@pytest.fixture
def tiny_clone(tmp_path: Path, small_mirror: Path, tiny_teacher: Path) -> tuple[Path, dict]:
    """The tiny teacher and student, for the tests that run the pipeline several times."""
    return make_clone(tmp_path / "repo", small_mirror, tiny_pipeline(tiny_teacher))


def test_embedforge_run_reproduces_then_skips_and_nests_mlflow_runs(clone):
    repo, env = clone
    first = sh("embedforge", "run", cwd=repo, env=env)
    closing = first.stdout.strip().splitlines()[-3:]  # where to look, after dvc repro's own output
    assert closing[0] == f"report:  {(repo / 'reports/index.html').resolve()}" and "dvc metrics show" in closing[1]
    assert closing[2] == f"MLflow:  mlflow ui --backend-store-uri sqlite:///{(repo / 'mlruns/mlflow.db').resolve()}"
    assert (repo / "data/raw/snli/train.parquet").is_file()
    assert (repo / "data/validation/results.json").is_file()
    assert (repo / "data/embeddings/all-MiniLM-L6-v2/manifest.json").is_file()
    assert (repo / "data/tokens/snli/train.parquet").is_file()
    assert (repo / "models/student/modules.json").is_file() and (repo / "checkpoints/best").is_dir()
    assert (repo / "reports/index.html").is_file()
    assert (repo / "dvc.lock").is_file()
    metrics = sh("dvc", "metrics", "show", "--json", cwd=repo, env=env).stdout
    assert "sts_spearman" in metrics and "examples_per_s" in metrics and "speed_ratio" in metrics

    second = sh("embedforge", "run", cwd=repo, env=env)
    assert "didn't change, skipping" in second.stdout or "up to date" in second.stdout
    assert "Running stage" not in second.stdout, second.stdout

    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("embedforge")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if run.info.run_name == "pipeline"]
    stages = ("download", "validate", "precompute", "tokenize", "train", "evaluate", "report")
    children = [run for run in runs if run.info.run_name in stages]
    assert len(parents) == 2 and len(children) == len(stages), first.stdout
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert all(run.info.status == "FINISHED" for run in runs)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    tokens = next(dep for dep in lock["stages"]["train"]["deps"] if dep["path"] == "data/tokens")
    assert parents[1].data.tags["dvc.train.data/tokens"] == tokens["md5"]


def test_changing_a_param_reruns_only_the_stages_that_read_it(tiny_clone):
    repo, env = tiny_clone
    sh("dvc", "repro", cwd=repo, env=env)
    params = (repo / "params.yaml").read_text().replace("max_chars: 1000", "max_chars: 900")
    (repo / "params.yaml").write_text(params)
    status = sh("dvc", "status", cwd=repo, env=env).stdout  # the resolved values are known once params re-runs
    assert "params:" in status and "download:" not in status and "precompute:" not in status
    rerun = sh("dvc", "repro", cwd=repo, env=env).stdout
    assert "Running stage 'validate'" in rerun and "Running stage 'download'" not in rerun, rerun
    for stage in ("precompute", "tokenize", "train", "evaluate"):  # the validation results did not change
        assert f"Running stage '{stage}'" not in rerun, rerun

    (repo / "params.yaml").write_text(params.replace("min_gap: 0.2", "min_gap: 0.3"))
    rerun = sh("dvc", "repro", cwd=repo, env=env).stdout
    assert "Running stage 'evaluate'" in rerun and "Running stage 'report'" in rerun
    for stage in ("download", "validate", "precompute", "tokenize", "train"):
        assert f"Running stage '{stage}'" not in rerun, rerun
    assert '"min_gap": 0.3' in (repo / "metrics/eval.json").read_text()

    presets = repo / "src/embedforge/config/presets.py"  # a default DVC never saw in params.yaml
    edited = re.sub(r'("development": \{.*?"train": \{)', r'\1"lr": 6e-05, ', presets.read_text(), count=1, flags=re.S)
    presets.write_text(edited)
    rerun = sh("dvc", "repro", cwd=repo, env=env).stdout
    for stage in ("params", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in rerun, rerun
    for stage in ("download", "validate", "precompute", "tokenize"):
        assert f"Running stage '{stage}'" not in rerun, rerun
    assert yaml.safe_load((repo / "params.resolved.yaml").read_text())["train"]["lr"] == 6e-05


FAMILIES = {  # each run's --set overrides, written into params.yaml on top of the previous run's
    "lattice": ["model.kind=lattice", "model.lattice.mode=null", "model.lattice.size=[4, 4, 4]"],
    "clm": ["model.kind=encoder", "train.objective=clm", "train.clm.max_new_tokens=4"],
    "static": [
        *("model.kind=static", "model.init=teacher_tokens", "model.static.dim=32"),
        *("train.objective=embedding", "train.objectives={infonce: 0.0, distill: 1.0}"),
    ],
}


def test_every_model_family_trains_end_to_end_through_dvc_repro_with_set_overrides(tiny_clone):
    from embedforge.api import load_sentence_transformer

    repo, env = tiny_clone
    for index, (family, overrides) in enumerate(FAMILIES.items()):
        done = sh("embedforge", "run", *(f"--set={item}" for item in overrides), cwd=repo, env=env)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        assert "# the student family" in (repo / "params.yaml").read_text()  # --set keeps the comments
        for stage in ("train", "evaluate", "report"):
            assert f"Running stage '{stage}'" in done.stdout, (family, done.stdout)
        if index:
            assert "Running stage 'download'" not in done.stdout and "Running stage 'tokenize'" not in done.stdout
        summary = json.loads((repo / "metrics/train.json").read_text())
        evaluation = json.loads((repo / "metrics/eval.json").read_text())
        assert -1 <= evaluation["student"]["sts"]["stsb/validation"]["spearman"] <= 1, family
        model = load_sentence_transformer(repo / "models/student")
        assert model.encode(["A dog runs."]).shape == (1, summary["embedding_dim"]), family
        if family == "lattice":
            assert params["model"]["lattice"]["size"] == [4, 4, 4] and summary["similarity_best"] is not None
        if family == "static":
            assert type(model[0]).__name__ == "StaticEmbedding" and summary["embedding_dim"] == 32
        if family == "clm":
            assert summary["perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
            assert "Causal LM continuations" in (repo / "reports/index.html").read_text()


@pytest.mark.parametrize("stage", ["download", "precompute", "tokenize"])
def test_dvc_repro_of_one_stage_in_a_clean_clone_runs_what_it_needs(stage, tmp_path, small_mirror, tiny):
    """`dvc repro <stage>` brings one stage up to date from nothing: every input it reads is declared.

    Only these stages can read an undeclared output and still pass a whole run: precompute and tokenize
    each have a stage that is neither before nor after it (the other), download reads only your files.
    For validate, train, evaluate and report every possible producer runs first whatever they declare;
    tests/test_dvc_deps.py checks their code deps.
    """
    repo, env = make_clone(tmp_path / "repo", small_mirror, tiny)
    done = sh("dvc", "repro", stage, cwd=repo, env=env)
    assert f"Running stage '{stage}'" in done.stdout, done.stdout
    assert sh("dvc", "status", stage, cwd=repo, env=env).stdout.strip().endswith("up to date.")
