"""The evaluate stage and the user API on a tiny student, the tiny teacher and 60-row slices of the mirror."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from common import build_tiny_sentence_model
from scipy import stats

from embedforge import load_model
from embedforge.config import flatten, load_params
from embedforge.errors import DataError, UserError
from embedforge.stages import evaluate

QUICK = ["evaluate.speed_sentences=60", "evaluate.speed_rounds=1", "evaluate.map_sentences=40"]


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    return build_tiny_sentence_model(tmp_path_factory.mktemp("tiny_student"), seed=1)


@pytest.fixture
def ready(project: Path, validated_data: Path, tiny_teacher: Path, tiny_student: Path):
    """The project with validated raw data and a student in models/student; returns a params builder."""
    shutil.copytree(validated_data, project / "data")
    shutil.copytree(tiny_student, project / "models/student")

    def params(*overrides: str):
        return load_params(
            project / "params.yaml",
            ["tracking.enabled=false", f"precompute.teacher={tiny_teacher}", *QUICK, *overrides],
        )

    return params


def test_evaluate_scores_student_and_teacher_and_writes_plot_files(project, ready):
    results = evaluate.run(ready())

    report = json.loads((project / "metrics/eval.json").read_text())
    sts = pd.read_csv(project / "plots/eval/sts.csv")
    separation = pd.read_csv(project / "plots/eval/separation.csv")
    for model in ("student", "teacher"):
        scored = report[model]
        assert set(scored["sts"]) == {"stsb/validation", "sick/validation"}
        for split, values in scored["sts"].items():
            rows = sts[(sts["model"] == model) & (sts["split"] == split)]
            assert values["pairs"] == len(rows) > 0
            assert values["spearman"] == pytest.approx(stats.spearmanr(rows["predicted"], rows["gold"]).statistic)
        cosines = separation[separation["model"] == model]
        assert scored["separation"]["similar_mean"] == pytest.approx(
            cosines[cosines["kind"] == "similar"]["cosine"].mean()
        )
        assert scored["separation"]["gap"] == pytest.approx(
            scored["separation"]["similar_mean"] - scored["separation"]["dissimilar_mean"]
        )
        retrieval = scored["retrieval"]
        assert 0 <= retrieval["recall@1"] <= retrieval["recall@10"] <= 1 and 0 < retrieval["mrr"] <= 1
        assert retrieval["queries"] > 0 and retrieval["corpus"] >= retrieval["queries"]
        assert scored["speed"]["sentences_per_s"] > 0 and scored["size"]["parameters"] > 0
        assert scored["size"]["disk_bytes"] > 0
    assert report["speed_ratio"] == pytest.approx(
        report["student"]["speed"]["sentences_per_s"] / report["teacher"]["speed"]["sentences_per_s"]
    )
    assert report["targets"] == {"similar_min": 0.7, "dissimilar_max": 0.5, "min_gap": 0.2}
    points = pd.read_csv(project / "plots/eval/embedding_map.csv")
    assert len(points) == 40 and np.isfinite(points[["x", "y"]].to_numpy()).all()
    assert set(points["label"]) <= {"main-news", "main-captions", "main-forums", "main-forum", "sick", "stsb"}
    assert results["eval.student.retrieval.recall_at_10"] == report["student"]["retrieval"]["recall@10"]
    assert results["eval.student.separation.passed"] in (0.0, 1.0)


def test_the_teacher_as_student_scores_exactly_like_the_teacher(project, ready, tiny_teacher):
    shutil.rmtree(project / "models/student")
    shutil.copytree(tiny_teacher, project / "models/student")
    evaluate.run(ready())
    report = json.loads((project / "metrics/eval.json").read_text())
    for section in ("sts", "separation", "retrieval"):
        assert flatten(report["student"][section]) == pytest.approx(flatten(report["teacher"][section])), section


def test_a_missing_or_foreign_model_directory_is_a_clear_error(project, ready):
    shutil.rmtree(project / "models/student")
    with pytest.raises(UserError, match=r"models/student: no model directory here"):
        evaluate.run(ready())
    (project / "models/student").mkdir()
    (project / "models/student/weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="not a SentenceTransformer directory"):
        evaluate.run(ready())
    assert not (project / "metrics/eval.json").exists()


def test_an_empty_split_is_an_error_not_a_nan(project, ready):
    path = project / "data/raw/sick/validation.parquet"
    pd.read_parquet(path).head(0).to_parquet(path, index=False)
    with pytest.raises(DataError, match=r"evaluate.sts_splits: data/raw/sick/validation.parquet has no rows"):
        evaluate.run(ready())


def test_constant_predictions_make_spearman_undefined_with_a_warning(project, ready, caplog):
    path = project / "data/raw/sick/validation.parquet"
    frame = pd.read_parquet(path)
    frame.assign(sentence2=frame["sentence1"]).to_parquet(path, index=False)  # every cosine is 1
    with caplog.at_level(logging.WARNING):
        evaluate.run(ready())
    report = json.loads((project / "metrics/eval.json").read_text())
    assert report["student"]["sts"]["sick/validation"]["spearman"] is None
    assert "sick/validation: all predictions are equal" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluate.sts_splits=[stsb/test]", r"evaluate.sts_splits: 'stsb/test' is not a downloaded"),
        ("evaluate.retrieval_split=sick/test", r"evaluate.retrieval_split: 'sick/test' is not a downloaded"),
    ],
)
def test_bad_evaluation_splits_name_the_param(ready, override, message):
    with pytest.raises(UserError, match=message):
        evaluate.run(ready(override))


def test_score_thresholds_must_be_ordered(ready):
    with pytest.raises(UserError, match=r"evaluate.dissimilar_max_score \(4.0\) must be < evaluate.similar_min_score"):
        ready("evaluate.dissimilar_max_score=4.0")


def test_similarity_and_search_on_a_model_directory(tiny_student):
    model = load_model(tiny_student)
    assert model.similarity("A dog runs.", "A dog runs.") == pytest.approx(1.0, abs=1e-5)
    candidates = ["Stocks fell sharply.", "A dog runs.", "It is raining."]
    matches = model.search("A dog runs.", candidates, top_k=2)
    assert matches[0].text == "A dog runs." and len(matches) == 2
    assert matches[0].score >= matches[1].score
    assert model.search("anything", [], top_k=3) == []
    with pytest.raises(UserError, match="top_k must be >= 1"):
        model.search("A dog runs.", candidates, top_k=0)
    with pytest.raises(UserError, match="no model directory here"):
        load_model(tiny_student.parent / "missing")
