"""The synthetic document retrieval set (benchmarks/document_set.py, importable as pytest puts benchmarks/ on
sys.path) built small from the mirror's SNLI test split."""

import json
from pathlib import Path

import pandas as pd
import pytest
from document_set import build

DOCUMENTS = 8


@pytest.fixture(scope="module")
def snli_test(shared_mirror: Path) -> Path:
    return shared_mirror / "snli/test.parquet"


@pytest.fixture(scope="module")
def tiny(snli_test: Path):
    return build(snli_test, seed=3, documents=DOCUMENTS)


def test_every_query_is_entailed_by_a_premise_of_its_one_relevant_document(tiny, snli_test):
    source = pd.read_parquet(snli_test)
    source = source.assign(premise=source["premise"].str.strip(), hypothesis=source["hypothesis"].str.strip())
    texts = dict(zip(tiny.documents["id"], tiny.documents["text"], strict=True))
    premises = dict(zip(tiny.documents["id"], tiny.premises, strict=True))
    assert len(tiny.queries) > 2 * DOCUMENTS
    for query, relevant in zip(tiny.queries["query"], tiny.queries["relevant"], strict=True):
        assert len(relevant) == 1
        rows = source[source["hypothesis"] == query]  # every SNLI pair of this hypothesis: one, an entailment
        assert rows["premise"].nunique() == 1 and (rows["label"] == "entailment").all()
        premise = rows["premise"].iloc[0]
        assert premise in premises[relevant[0]] and premise in texts[relevant[0]]
    used = [premise for group in tiny.premises for premise in group]
    entailed = source[(source["label"] == "entailment") & source["premise"].isin(used)]
    assert len(tiny.queries) + tiny.dropped == entailed["hypothesis"].nunique()  # each a query or dropped


def test_documents_are_distinct_premises_within_bounds(tiny):
    sizes = [len(premises) for premises in tiny.premises]
    assert len(tiny.documents) == DOCUMENTS and all(5 <= size <= 40 for size in sizes)
    used = [premise for premises in tiny.premises for premise in premises]
    assert len(set(used)) == len(used)
    assert list(tiny.documents["text"]) == [" ".join(premises) for premises in tiny.premises]
    assert list(tiny.documents["id"]) == [f"doc-{number:05d}" for number in range(1, DOCUMENTS + 1)]
    assert tiny.queries["query_id"].is_unique and tiny.queries["query"].is_unique
    assert (tiny.documents["text"].str.len() > 600).mean() > 0.5  # most span more than 128 MiniLM tokens


def test_a_seed_gives_one_set_and_the_tiny_set_is_its_prefix(tiny, snli_test):
    again = build(snli_test, seed=3, documents=DOCUMENTS)
    pd.testing.assert_frame_equal(again.documents, tiny.documents)
    pd.testing.assert_frame_equal(again.queries, tiny.queries)
    larger = build(snli_test, seed=3, documents=DOCUMENTS + 4)
    pd.testing.assert_frame_equal(larger.documents.head(DOCUMENTS), tiny.documents)
    other = build(snli_test, seed=4, documents=DOCUMENTS)
    assert list(other.documents["text"]) != list(tiny.documents["text"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_written_files_read_back_as_documents_and_queries(tiny, tmp_path):
    tiny.write(tmp_path)
    documents, queries = read_jsonl(tmp_path / "documents.jsonl"), read_jsonl(tmp_path / "queries.jsonl")
    assert list(documents[0]) == ["id", "text"] and list(queries[0]) == ["query_id", "query", "relevant"]
    assert documents == tiny.documents.to_dict("records") and queries == tiny.queries.to_dict("records")
