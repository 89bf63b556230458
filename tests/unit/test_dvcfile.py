import shutil

import pytest
from helpers import REPO_ROOT

from embedforge import dvcfile
from embedforge.config import Params, load_params
from embedforge.errors import UserError
from embedforge.evaluation.verdict import verdict
from embedforge.report.markdown import evaluation_summary


@pytest.fixture
def repo(tmp_path, monkeypatch):
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "src/embedforge/stages").mkdir(parents=True)
    (tmp_path / "src/embedforge/stages/evaluate.py").write_text("print('v1')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def key(repo, stage, *overrides):
    return dvcfile.fingerprint(dvcfile.stage_spec(stage), load_params(repo / "params.yaml", list(overrides)), repo)


def test_the_fingerprint_follows_declared_params_and_deps_only(repo):
    spec = dvcfile.stage_spec("evaluate")
    assert "evaluate" in spec.params and "models/student" in spec.deps and "metrics/eval.json" in spec.outs
    base = key(repo, "evaluate")
    assert key(repo, "evaluate") == base
    assert key(repo, "evaluate", "evaluate.min_gap=0.3") != base  # a declared section
    assert key(repo, "evaluate", "precompute.teacher=elsewhere") != base  # a declared single key
    assert key(repo, "evaluate", "train.lr=1.0") == base  # not declared for evaluate
    (repo / "src/embedforge/stages/__pycache__").mkdir()
    (repo / "src/embedforge/stages/__pycache__/evaluate.cpython-311.pyc").write_bytes(b"\0")
    assert key(repo, "evaluate") == base  # bytecode is not code
    (repo / "src/embedforge/stages/evaluate.py").write_text("print('v2')\n")
    assert key(repo, "evaluate") != base


def test_outputs_present_and_unknown_stages(repo):
    spec = dvcfile.stage_spec("report")
    assert not dvcfile.outputs_present(spec, repo)
    (repo / "reports").mkdir()
    assert dvcfile.outputs_present(spec, repo)
    with pytest.raises(UserError, match="no stage 'deploy'"):
        dvcfile.stage_spec("deploy")


def test_evaluation_summary_leads_with_the_verdict_then_a_markdown_table_with_undefined_values():
    scored = {
        "sts": {"stsb/test": {"spearman": None}},
        "separation": {"gap": 0.3, "passed": False},
        "retrieval": {"recall@1": 0.5, "mrr": 0.6, "queries": 10},
        "speed": {"sentences_per_s": 100.0},
    }
    evaluation = {"student": scored, "teacher": scored, "speed_ratio": 2.5, "size_ratio": 0.7}
    text = evaluation_summary({**evaluation, "verdict": verdict(evaluation, Params())}, "run abc")
    assert text.startswith(
        "**Goals missed:** The student keeps an undefined share of the teacher's STS Spearman on stsb/test, at 2.50× "
        "the teacher's speed and 0.70× its parameters: it misses the run's goals: share of the teacher's STS "
        "Spearman kept, stsb/test, undefined (target ≥ 0.95)."
    )
    assert "| share of the teacher's STS Spearman kept, stsb/test | undefined | ≥ 0.95 | no |" in text
    assert "| speed, student ÷ teacher | 2.5000 | ≥ 2 | yes |" in text and "- stsb/test: test split" in text
    assert "| STS Spearman, stsb/test | undefined | undefined |" in text
    assert "| Separation targets (absolute) | missed | missed |" in text and "| recall @ 1 | 0.5000 | 0.5000 |" in text
    assert "queries" not in text and "**2.50x**" in text and text.endswith("MLflow run: run abc")


def test_an_unchanged_input_is_fingerprinted_without_reading_it_again(tmp_path, monkeypatch):
    from embedforge import files

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x" * 1000)
    (data / "b.bin").write_bytes(b"y" * 1000)
    reads: list = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path: reads.append(path) or real(path))

    first = files.content_key(data)
    assert sorted(p.name for p in reads) == ["a.bin", "b.bin"]
    reads.clear()
    assert files.content_key(data) == first and reads == []  # known by size, mtime and inode

    (data / "a.bin").write_bytes(b"z" * 1000)  # same size, new content and mtime
    assert files.content_key(data) != first and [p.name for p in reads] == ["a.bin"]
    assert files.hash_cache_path().is_file()


def test_a_copied_project_has_the_same_fingerprints(repo, tmp_path):
    """The flow's cache lives in the project (.flow-cache), so a copy, with its cache, still finds its stages done."""
    copy = shutil.copytree(repo, tmp_path / "elsewhere")
    assert key(copy, "evaluate") == key(repo, "evaluate")
    (copy / "src/embedforge/stages/evaluate.py").write_text("print('v2')\n")
    assert key(copy, "evaluate") != key(repo, "evaluate")
