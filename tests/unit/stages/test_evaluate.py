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
    few = report["agreement"]  # 2% of 60-row train splits: too few held-out texts to have 10 neighbours each
    assert few["units"] < 11 and few["knn@10_overlap"] is None and few["pairwise_spearman"] is None
    assert few["reason"] == f"{few['units']} held-out units: 10 nearest neighbours need at least 11"


def test_agreement_with_the_teacher_on_held_out_training_text(project, ready):
    results = evaluate.run(ready("train.held_out_share=0.5", "evaluate.agreement_sentences=30"))

    agreement = json.loads((project / "metrics/eval.json").read_text())["agreement"]
    assert agreement["units"] == 30 and agreement["reason"] is None
    assert 0 <= agreement["knn@10_overlap"] < 1 and -1 <= agreement["pairwise_spearman"] < 1
    assert results["eval.agreement.knn_at_10_overlap"] == agreement["knn@10_overlap"]
    assert results["eval.agreement.pairwise_spearman"] == agreement["pairwise_spearman"]
    assert (
        evaluate.agreement_off(ready("train.held_out_share=0"))
        == "train.held_out_share is 0: training held no text out"
    )
    assert evaluate.agreement_off(ready("evaluate.agreement_sentences=0")) == "evaluate.agreement_sentences is 0"


def test_the_teacher_as_student_scores_exactly_like_the_teacher(project, ready, tiny_teacher):
    shutil.rmtree(project / "models/student")
    shutil.copytree(tiny_teacher, project / "models/student")
    evaluate.run(ready("train.held_out_share=0.3"))
    report = json.loads((project / "metrics/eval.json").read_text())
    for section in ("sts", "separation", "retrieval"):
        assert flatten(report["student"][section]) == pytest.approx(flatten(report["teacher"][section])), section
    assert report["agreement"]["units"] > 11 and report["agreement"]["knn@10_overlap"] == 1.0
    assert report["agreement"]["pairwise_spearman"] == pytest.approx(1.0)


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


def test_search_scores_a_long_candidate_from_all_its_chunks_not_its_first(tiny_student):
    model = load_model(tiny_student)  # max_seq_length 128
    filler = " ".join(["The committee discussed the quarterly budget at length."] * 40)
    late_match = f"{filler} A dog runs through the snow."
    vectors, owner = model.chunk_vectors(["A dog runs.", late_match])
    assert owner.tolist() == [0, 1, 1, 1]  # 41 sentences of about 9 tokens: three chunks of at most 128
    pooled = vectors[owner == 1].mean(axis=0)
    assert model.embed([late_match])[0] == pytest.approx(pooled / np.linalg.norm(pooled), abs=1e-6)
    best_chunk = float((vectors[owner == 1] @ model.embed(["A dog runs through the snow."])[0]).max())
    [match] = model.search("A dog runs through the snow.", [late_match], top_k=1)  # max_sim unless told
    assert match.text == late_match and match.score == pytest.approx(best_chunk, abs=1e-5)
    [by_mean] = model.search("A dog runs through the snow.", [late_match], top_k=1, pooling="mean")
    query = model.embed(["A dog runs through the snow."])[0]
    assert by_mean.score == pytest.approx(float(model.embed([late_match])[0] @ query), abs=1e-5)
    truncated = model.model.encode([late_match], normalize_embeddings=True)[0]  # sentence-transformers cuts at 128
    assert not np.allclose(model.embed([late_match])[0], truncated, atol=1e-3)
    with pytest.raises(UserError, match="pooling must be one of mean, max_sim"):
        model.search("a", ["b"], pooling="first")


def ndcg_at_10(scores: np.ndarray, relevant: list[list[int]]) -> float:
    """Brute force over the whole score matrix: the reference the blockwise search must equal."""
    total = 0.0
    for row, wanted in zip(scores, relevant, strict=True):
        ranked = np.argsort(-row, kind="stable")[:10]
        gained = sum(1 / np.log2(rank + 2) for rank, document in enumerate(ranked) if document in wanted)
        total += gained / sum(1 / np.log2(rank + 2) for rank in range(min(len(wanted), 10)))
    return total / len(relevant)


def test_documents_are_searched_from_their_chunks_beside_their_first_chunk(project, ready, tiny_teacher, shared_mirror):
    from document_set import build
    from helpers import write_raw_split
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embedforge.data.chunks import Chunker
    from embedforge.data.schema import raw_schema

    built = build(shared_mirror / "snli/test.parquet", seed=0, documents=6)
    write_raw_split(built.documents.assign(title=None), project / "data/raw/docs/test.parquet", raw_schema("documents"))
    write_raw_split(built.queries, project / "data/raw/queries/test.parquet", raw_schema("queries"))
    results = evaluate.run(
        ready(
            'download.datasets.docs={kind: documents, files: "d.jsonl", splits: [test]}',
            'download.datasets.queries={kind: queries, files: "q.jsonl", documents: docs, splits: [test]}',
            "evaluate.document_retrieval=[queries/test]",
            "tokenize.max_length=32",
        )
    )

    scored = json.loads((project / "metrics/eval.json").read_text())["teacher"]["documents"]["queries/test"]
    chunker = Chunker(AutoTokenizer.from_pretrained(str(tiny_teacher)), 32, 0)
    chunked = chunker.split(built.documents["text"].tolist())
    teacher = SentenceTransformer(str(tiny_teacher), device="cpu")
    position = {identifier: index for index, identifier in enumerate(built.documents["id"])}
    relevant = [[position[i] for i in ids] for ids in built.queries["relevant"]]
    queries = teacher.encode(built.queries["query"].tolist(), normalize_embeddings=True)
    units = [teacher.encode(document.units, normalize_embeddings=True) for document in chunked]
    best_chunk = np.stack([(queries @ vectors.T).max(axis=1) for vectors in units], axis=1)  # max_sim, the default
    first = np.stack([vectors[0] for vectors in units])
    assert scored["queries"] == len(built.queries) and scored["documents"] == 6
    assert scored["units"] == sum(len(document.units) for document in chunked) > 6 * 3
    assert scored["long_queries"] == len(built.queries)  # every document is longer than 32 tokens
    assert scored["all"]["chunked"]["ndcg@10"] == pytest.approx(ndcg_at_10(best_chunk, relevant), abs=1e-5)
    assert scored["all"]["first_chunk"]["ndcg@10"] == pytest.approx(ndcg_at_10(queries @ first.T, relevant), abs=1e-5)
    assert scored["long"] == scored["all"]
    assert results["eval.student.documents.queries/test.all.chunked.ndcg_at_10"] > 0
