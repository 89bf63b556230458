"""Documents and queries in params: who may name them, which documents split a queries split searches, and the
document params, each refusal naming its key."""

from __future__ import annotations

import pytest
import yaml
from helpers import REPO_ROOT

from embedforge.config import DatasetSource, documents_split, flatten, load_params
from embedforge.errors import UserError
from embedforge.redact import redacted

PARAMS_YAML = REPO_ROOT / "params.yaml"
DOCS = 'download.datasets.docs={kind: documents, files: "data/external/docs/*.jsonl", splits: [test]}'
QUESTIONS = (
    'download.datasets.questions={kind: queries, files: "data/external/questions/*.csv", documents: docs, '
    'splits: {validation: "*dev*", test: "*test*"}}'
)
DISTIL = ["train.objectives={infonce: 0.0, distill: 1.0}"]


def load(*overrides: str):
    return load_params(PARAMS_YAML, [DOCS, QUESTIONS, *overrides])


def test_documents_and_queries_serve_where_their_kinds_can():
    cfg = load(
        "precompute.datasets=[snli, docs]",
        "tokenize.datasets=[snli, docs]",
        "train.datasets=[snli, docs]",
        *DISTIL,
        "evaluate.document_retrieval=[questions/test, questions/validation]",
        "evaluate.document_pooling=mean",
        "train.max_chunks_per_text=1",
    )
    assert cfg.download.datasets["questions"].documents == "docs"
    assert cfg.evaluate.document_retrieval == ["questions/test", "questions/validation"]
    assert (cfg.evaluate.document_pooling, cfg.train.max_chunks_per_text) == ("mean", 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["precompute.datasets=[questions]"],
            r"precompute.datasets: questions is a queries dataset \(download.datasets",
        ),
        (["tokenize.datasets=[snli, questions]"], r"tokenize.datasets: questions is a queries dataset"),
        (["train.datasets=[questions]", *DISTIL], r"train.datasets: questions is a queries dataset .* texts to embed"),
        (["evaluate.sts_splits=[questions/test]"], r"evaluate.sts_splits: questions is a queries dataset"),
        (["evaluate.separation_splits=[docs/test]"], r"evaluate.separation_splits: docs is a documents dataset"),
        (
            ["evaluate.retrieval_split=questions/test"],
            r"evaluate.retrieval_split: questions is a queries dataset .*needs pairs.* evaluate.document_retrieval",
        ),
        (["evaluate.retrieval_split=docs/test"], r"evaluate.retrieval_split: docs is a documents dataset"),
        (["train.sts_validation=docs/test"], r"train.sts_validation: docs is a documents dataset"),
        (["train.sts_validation=questions/test"], r"train.sts_validation: questions is a queries dataset"),
        (["train.datasets=[docs]"], r"train.datasets: docs is a documents dataset .*InfoNCE trains on pairs"),
        (
            ["evaluate.document_retrieval=[docs/test]"],
            r"evaluate.document_retrieval: docs is a documents dataset .*needs queries",
        ),
        (["evaluate.document_retrieval=[stsb/test]"], r"evaluate.document_retrieval: stsb is a pairs_score dataset"),
        (["evaluate.document_retrieval=[questions]"], r"evaluate.document_retrieval: 'questions' is not <dataset>/<"),
        (["evaluate.document_retrieval=[nothing/test]"], r"evaluate.document_retrieval: dataset 'nothing' is not decl"),
        (["evaluate.document_pooling=sum"], r"evaluate.document_pooling: input should be 'mean' or 'max_sim'"),
        (["train.max_chunks_per_text=0"], r"train.max_chunks_per_text: must be >= 1, got 0"),
    ],
    ids=[
        "precompute-queries",
        "tokenize-queries",
        "train-queries",
        "sts-queries",
        "separation-documents",
        "retrieval-queries",
        "retrieval-documents",
        "sts-validation-documents",
        "sts-validation-queries",
        "infonce-documents",
        "document-retrieval-documents",
        "document-retrieval-pairs",
        "document-retrieval-no-split",
        "document-retrieval-undeclared",
        "pooling",
        "max-chunks",
    ],
)
def test_a_documents_or_queries_dataset_named_where_it_cannot_serve_is_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load(*overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ['download.datasets.questions={kind: queries, files: "q.csv", splits: [test]}'],
            r"download.datasets.questions: documents: required for a queries dataset",
        ),
        (
            ['download.datasets.notes={kind: sentences, files: "n.txt", documents: docs, splits: [train]}'],
            r"download.datasets.notes: documents: names the documents of a queries dataset's relevant ids; "
            r"a sentences dataset has none",
        ),
        (
            ["download.datasets.questions.documents=nothing"],
            r"download.datasets.questions.documents: dataset 'nothing' is not declared in download.datasets",
        ),
        (
            ["download.datasets.questions.documents=stsb"],
            r"download.datasets.questions.documents: stsb is a pairs_score dataset \(download.datasets.stsb.kind\)",
        ),
        (
            ['download.datasets.docs.splits={train: "*train*", test: "*test*"}'],
            r"download.datasets.questions.documents: questions/validation needs the documents split "
            r"docs/validation, but docs has the splits train, test",
        ),
        (["download.datasets.docs.score_range=[0, 1]"], r"score_range apply to pairs, not to a documents dataset"),
        (["download.datasets.questions.columns.text=body"], r"columns: text is not a column of a queries dataset"),
    ],
    ids=[
        "queries-without-documents",
        "documents-on-sentences",
        "undeclared",
        "not-documents",
        "no-split",
        "range",
        "col",
    ],
)
def test_a_queries_dataset_must_name_documents_it_can_search(overrides, message):
    with pytest.raises(UserError, match=message):
        load(*overrides)


def declared(**entries: dict) -> dict[str, DatasetSource]:
    return {name: DatasetSource.model_validate(entry) for name, entry in entries.items()}


def test_documents_split_is_the_split_of_the_same_name_or_the_only_one():
    questions = {"kind": "queries", "files": "q", "documents": "docs", "splits": {"validation": "a", "test": "b"}}
    by_name = declared(
        questions=questions, docs={"kind": "documents", "files": "d", "splits": {"validation": "a", "test": "b"}}
    )
    assert documents_split("questions", "test", by_name) == ("docs", "test")
    assert documents_split("questions", "validation", by_name) == ("docs", "validation")
    one = declared(questions=questions, docs={"kind": "documents", "files": "d", "splits": ["corpus"]})
    assert documents_split("questions", "test", one) == documents_split("questions", "x", one) == ("docs", "corpus")
    carved = declared(
        questions=questions,
        docs={"kind": "documents", "files": "d", "splits": ["train"], "validation_fraction": 0.1},
    )  # download writes train and validation: two splits
    assert documents_split("questions", "validation", carved) == ("docs", "validation")
    with pytest.raises(ValueError, match=r"questions/test needs the documents split docs/test, but docs has the spl"):
        documents_split("questions", "test", carved)
    with pytest.raises(ValueError, match=r"docs is a documents dataset, not a queries dataset"):
        documents_split("docs", "test", one)


def test_the_document_params_have_one_dotted_name_in_params_yaml_the_schema_and_mlflow():
    """params.yaml spells them, the schema resolves them and MLflow logs them under the same dotted names."""
    keys = {
        "evaluate.document_retrieval": [],
        "evaluate.document_pooling": "max_sim",
        "train.max_chunks_per_text": None,
    }
    in_file = flatten(yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8")))
    cfg = load_params(PARAMS_YAML)
    logged = flatten(redacted(cfg.to_dict()))  # what tracking logs to every run
    assert {key: in_file[key] for key in keys} == {key: logged[key] for key in keys} == keys
