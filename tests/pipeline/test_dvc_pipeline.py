"""A real `dvc repro` in a fresh git repository laid out like a clone of this project."""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, clone_env, make_clone, sh
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


@pytest.fixture
def clone(tmp_path: Path, small_mirror: Path) -> tuple[Path, dict]:
    """The real teacher and preset, on less data and one epoch (the development preset trains for minutes)."""
    return make_clone(tmp_path / "repo", small_mirror, ["download.limit=1000", "train.epochs=1"])


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


def test_changing_a_param_reruns_only_the_stages_that_read_it(finished_clone):
    repo, env = finished_clone
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


FAMILIES = {  # each case's --set overrides on the finished tiny encoder pipeline
    "encoder": [],
    "lattice": ["model.kind=lattice", "model.lattice.mode=null", "model.lattice.size=[4, 4, 4]"],
    "dynamic": ["model.kind=dynamic"],
    "static": [
        *("model.kind=static", "model.init=teacher_tokens", "model.static.dim=32"),
        *("train.objective=embedding", "train.objectives={infonce: 0.0, distill: 1.0}"),
    ],
    "staged": [
        "train.schedule=staged",
        "train.staged.foundation={data_fraction: 0.5, epochs: 1}",
        "train.staged.consolidation={data_fraction: 1.0, epochs: 1, balanced: true}",
        "train.staged.mastery={data_fraction: 1.0, epochs: 1}",
    ],
    "clm": ["train.objective=clm", "train.clm.max_new_tokens=4"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_trains_end_to_end_through_dvc_repro_with_set_overrides(family, finished_clone):
    """Each family, the staged schedule and the clm objective, switched on with `embedforge run --set` in a
    project whose encoder pipeline has run: train, evaluate and report run again, the data stages do not."""
    from embedforge.api import load_sentence_transformer

    repo, env = finished_clone
    done = sh("embedforge", "run", *(f"--set={item}" for item in FAMILIES[family]), cwd=repo, env=env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert "# the student family" in (repo / "params.yaml").read_text()  # --set keeps the comments
    for stage in ("download", "validate", "precompute", "tokenize"):
        assert f"Running stage '{stage}'" not in done.stdout, (family, done.stdout)
    for stage in ("train", "evaluate", "report"):
        assert (f"Running stage '{stage}'" in done.stdout) == (family != "encoder"), (family, done.stdout)
    summary = json.loads((repo / "metrics/train.json").read_text())
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert -1 <= evaluation["student"]["sts"]["stsb/validation"]["spearman"] <= 1, family
    model = load_sentence_transformer(repo / "models/student")
    assert model.encode(["A dog runs."]).shape == (1, summary["embedding_dim"]), family
    assert params["model"]["kind"] == (family if family in ("lattice", "dynamic", "static") else "encoder")
    if family == "lattice":
        assert params["model"]["lattice"]["size"] == [4, 4, 4] and summary["similarity_best"] is not None
    if family == "static":
        assert type(model[0]).__name__ == "StaticEmbedding" and summary["embedding_dim"] == 32
    if family == "staged":
        assert list(summary["phases"]) == ["foundation", "consolidation", "mastery"]
    if family == "clm":
        assert summary["perplexity"] == pytest.approx(math.exp(summary["val_loss"]))
        assert "Causal LM continuations" in (repo / "reports/index.html").read_text()


STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def upstream(stage: str, repo: Path, env: dict) -> set[str]:
    """The stages ``stage`` depends on, directly or not, as DVC draws its graph (`dvc dag --dot`)."""
    dot = sh("dvc", "dag", "--dot", stage, cwd=repo, env=env).stdout
    return set(re.findall(r'"([^"]+)"', dot)) - {stage}


def outputs(stage: str) -> list[str]:
    """Every path ``stage`` writes (outs, metrics, plots), as dvc.yaml declares them."""
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]
    entries = [entry for kind in ("outs", "metrics", "plots") for entry in declared.get(kind, [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_repro_of_one_stage_in_a_clean_clone_runs_what_it_needs(stage, finished_pipeline, small_mirror, tmp_path):
    """`dvc repro <stage>` in a clean clone runs the stage on what it declares, and nothing else is there.

    The clone is a `git clone` of the finished tiny project: no output of any stage. It is given what `dvc pull`
    would give a colleague for the stages upstream of this one (their outputs, the DVC cache, and their entries
    of the dvc.lock the finished run wrote), so DVC finds them up to date and runs this stage alone, on those
    files only: an input read but not declared (an output of a stage that is not upstream) is missing, and the
    stage fails.
    """
    repo = tmp_path / "repo"
    env = clone_env(repo, small_mirror)
    sh("git", "clone", "-q", str(finished_pipeline), str(repo), cwd=tmp_path, env=env)
    assert not (repo / "dvc.lock").exists() and not (repo / "data/raw").exists()
    before = upstream(stage, repo, env)
    for path in [path for name in before for path in outputs(name)]:
        copy = shutil.copytree if (finished_pipeline / path).is_dir() else shutil.copy2
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        copy(finished_pipeline / path, repo / path)
    lock = yaml.safe_load((finished_pipeline / "dvc.lock").read_text())
    lock["stages"] = {name: entry for name, entry in lock["stages"].items() if name in before}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.copytree(finished_pipeline / ".dvc/cache", repo / ".dvc/cache")
    done = sh("dvc", "repro", "--no-run-cache", stage, cwd=repo, env=env).stdout
    assert re.findall(r"Running stage '([^']+)'", done) == [stage], done
    assert sh("dvc", "status", stage, cwd=repo, env=env).stdout.strip().endswith("up to date.")
    assert not any((repo / path).exists() for name in set(STAGES) - before - {stage} for path in outputs(name))
