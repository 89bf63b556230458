"""Documents and the queries that search them: own data for document retrieval, from files through download,
normalisation and validation, and the one rule for a document's text with its title."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO_ROOT, write_raw_split

from embedforge.config import Params, load_params
from embedforge.data.readers import RawBatch
from embedforge.data.schema import DOCUMENTS_SCHEMA, QUERIES_SCHEMA, raw_split_path
from embedforge.data.sentences import document_text, iter_sentences
from embedforge.data.sources.normalise import normalise, relevant_ids
from embedforge.errors import DataError, ValidationFailed
from embedforge.paths import VALIDATION_RESULTS_PATH
from embedforge.stages import download, validate

DOCS = (
    'download.datasets.docs={kind: documents, files: "data/external/docs/*.jsonl", '
    "columns: {id: doc_id, text: body}, splits: [test]}"
)
QUESTIONS = (
    'download.datasets.questions={kind: queries, files: "data/external/questions/*", '
    "columns: {query: question, relevant: answers}, documents: docs, splits: [test]}"
)
LONG = " ".join(["A long document goes on about retrieval."] * 40)  # 1,639 characters: above validate.max_chars
DOCUMENTS = [
    {"doc_id": "d1", "title": "Guitars", "body": "A man is playing a guitar on stage."},
    {"doc_id": "d2", "body": "Two dogs run through a field."},  # no title at all
    {"doc_id": "d3", "title": "  ", "body": LONG},  # a blank title is none
    {"doc_id": 4, "title": "Cooking", "body": "The woman is slicing an onion."},  # a number as id: "4"
]
QUERIES_JSONL = [
    {"question": "Who plays music?", "answers": "d1"},  # one id
    {"question": "Animals outside", "answers": ["d2", 4]},  # a list, a number among them
    {"question": "A long read", "answers": '["d3", "d1"]'},  # a JSON list in a string
]
QUERIES_CSV = pd.DataFrame(
    {"question": ["What is for dinner?", "Music and food"], "answers": ["4", '["d1", "4"]']}  # CSV holds text only
)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def columns_of(path: Path) -> list[tuple[str, pa.DataType, bool]]:
    return [(field.name, field.type, field.nullable) for field in pq.read_schema(path)]


def test_documents_and_queries_from_files_download_and_validate(project, mirror_params):
    write_jsonl(project / "data/external/docs/docs.jsonl", DOCUMENTS)
    write_jsonl(project / "data/external/questions/a.jsonl", QUERIES_JSONL)
    QUERIES_CSV.to_csv(project / "data/external/questions/b.csv", index=False)
    cfg = mirror_params(DOCS, QUESTIONS)

    download.run(cfg)

    documents = project / "data/raw/docs/test.parquet"
    assert columns_of(documents) == [(f.name, f.type, f.nullable) for f in DOCUMENTS_SCHEMA]
    assert pq.read_table(documents).to_pydict() == {
        "id": ["d1", "d2", "d3", "4"],
        "text": [record["body"] for record in DOCUMENTS],
        "title": ["Guitars", None, None, "Cooking"],
    }
    queries = project / "data/raw/questions/test.parquet"
    assert columns_of(queries) == [(f.name, f.type, f.nullable) for f in QUERIES_SCHEMA]
    table = pq.read_table(queries)
    assert table.column("query_id").to_pylist() == [f"test-{row}" for row in range(5)]  # numbered on across files
    assert table.column("relevant").to_pylist() == [["d1"], ["d2", "4"], ["d3", "d1"], ["4"], ["d1", "4"]]

    assert validate.run(cfg)["validate.failed_expectations"] == 0
    splits = {f"{s['dataset']}/{s['split']}": s for s in json.loads(VALIDATION_RESULTS_PATH.read_text())["splits"]}
    checks = {e["description"]: e for e in splits["questions/test"]["expectations"] if e["description"]}
    assert checks["Relevant: every relevant id is a document of docs/test"]["success"]
    assert checks["Relevant: every query has at least one relevant id"]["success"]
    lengths = [e for e in splits["docs/test"]["expectations"] if e["expectation"].endswith("lengths_to_be_between")]
    assert [(e["columns"], e["success"]) for e in lengths] == [(["text"], True)]  # LONG passes: no max_chars


def test_download_limit_samples_queries_but_keeps_the_documents_they_search_whole(project, mirror_params):
    write_jsonl(project / "data/external/docs/docs.jsonl", DOCUMENTS)
    write_jsonl(project / "data/external/questions/a.jsonl", QUERIES_JSONL)

    download.run(mirror_params(DOCS, QUESTIONS, "download.limit=2"))

    assert pq.read_metadata(project / "data/raw/docs/test.parquet").num_rows == len(DOCUMENTS)
    assert pq.read_metadata(project / "data/raw/questions/test.parquet").num_rows == 2
    assert pq.read_metadata(project / "data/raw/stsb/validation.parquet").num_rows == 2


def test_a_document_is_read_as_its_title_then_its_text(tmp_path):
    path = tmp_path / "documents.parquet"
    frame = pd.DataFrame(
        {
            "id": ["d1", "d2", "d3", "d4"],
            "text": ["A  man\nplays a guitar.", "Dogs run.", "No title here.", None],
            "title": ["Guitars ", None, "   ", "A title alone"],
        }
    )
    write_raw_split(frame, path, DOCUMENTS_SCHEMA)

    assert list(iter_sentences([path])) == ["Guitars A man plays a guitar.", "Dogs run.", "No title here."]
    assert document_text("Guitars", "A man plays.") == "Guitars A man plays."
    assert document_text(None, "A man plays.") == document_text(" ", "A man plays.") == "A man plays."


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("d1", ["d1"]),
        (" d1 ", ["d1"]),
        (["d1", "d2"], ["d1", "d2"]),
        ('["d1", "d2"]', ["d1", "d2"]),
        (' [ "d1" ] ', ["d1"]),
        (np.array(["d2", None], dtype=object), ["d2"]),  # a list column read from parquet or the hub
        ([3, 4.0, "", None], ["3", "4"]),
        (7, ["7"]),
        (None, []),
        (float("nan"), []),
        ("", []),
        ("[]", []),
    ],
)
def test_relevant_ids_become_a_list_of_strings(value, ids):
    assert relevant_ids(value) == ids


def test_a_malformed_relevant_value_names_the_file_and_row():
    source = load_params(REPO_ROOT / "params.yaml", [DOCS, QUESTIONS]).download.datasets["questions"]
    frame = pd.DataFrame({"question": ["a", "b", "c"], "answers": ["d1", '["d1", "d2"', "d2"]})
    with pytest.raises(DataError, match=r"b.csv: questions/test row 11: column 'answers' is not an id, a list of ids"):
        normalise("questions", "test", RawBatch(frame, "b.csv", first_row=10), source)
    frame = pd.DataFrame({"question": ["a"], "answers": ['[{"id": "d1"}]']})
    with pytest.raises(DataError, match=r"row 0: .*an id is a string or a number, got dict"):
        normalise("questions", "test", RawBatch(frame, "b.csv"), source)


# --- validation of raw splits written as download writes them ---


@pytest.fixture
def validated_params(project: Path) -> Callable[..., Params]:
    """Params declaring docs and questions (or the given declarations instead), for validate alone."""

    def build(*declared: str) -> Params:
        overrides = [*(declared or (DOCS, QUESTIONS)), "validate.data_docs=false", "tracking.enabled=false"]
        return load_params(project / "params.yaml", overrides)

    return build


def clean_documents() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["d1", "d2", "d3"],
            "text": ["A man is playing a guitar.", "Two dogs run through a field.", LONG],
            "title": ["Guitars", None, "Retrieval"],
        }
    )


def clean_queries() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query_id": ["test-0", "test-1", "test-2"],
            "query": ["Who plays music?", "Animals outside", "A long read"],
            "relevant": [["d1"], ["d2", "d3"], ["d3"]],
        }
    )


def unknown_document(frames: dict[str, pd.DataFrame]) -> None:
    frames["questions"]["relevant"] = [["d1"], ["d2", "d9"], ["d3"]]


def no_relevant_id(frames: dict[str, pd.DataFrame]) -> None:
    frames["questions"]["relevant"] = [["d1"], ["d2", "d3"], []]


def repeated_document_id(frames: dict[str, pd.DataFrame]) -> None:
    docs = frames["docs"]
    frames["docs"] = pd.concat([docs, docs.head(1).assign(text="Another text, the same id.")], ignore_index=True)


def blank_document(frames: dict[str, pd.DataFrame]) -> None:
    frames["docs"].loc[1, "text"] = "  \n "


def repeated_query_id(frames: dict[str, pd.DataFrame]) -> None:
    frames["questions"].loc[2, "query_id"] = "test-0"


def long_query(frames: dict[str, pd.DataFrame]) -> None:
    frames["questions"].loc[0, "query"] = LONG  # validate.max_chars bounds queries, as it does sentences


@pytest.mark.parametrize(
    ("corrupt", "where", "fragments"),
    [
        (
            unknown_document,
            "questions/test",
            [
                "expect_column_values_to_be_in_set(relevant_unknown) failed for 1 of 3 rows "
                "[Relevant: every relevant id is a document of docs/test]",
                "row 1: query_id='test-1', query='Animals outside', relevant=['d2', 'd9']",
            ],
        ),
        (
            no_relevant_id,
            "questions/test",
            ["relevant_none) failed for 1 of 3 rows [Relevant: every query has at least one relevant id]", "row 2: "],
        ),
        (
            repeated_document_id,
            "docs/test",
            ["(id_repeated) failed for 2 of 4 rows [Ids: every id occurs once in its split]", "row 0: id='d1'"],
        ),
        (blank_document, "docs/test", ["expect_column_values_to_match_regex(text)", "row 1: id='d2'"]),
        (repeated_query_id, "questions/test", ["[Ids: every query_id occurs once in its split]"]),
        (long_query, "questions/test", ["expect_column_value_lengths_to_be_between(query)", "row 0: "]),
    ],
    ids=["unknown-document", "no-relevant-id", "repeated-document-id", "blank-document", "repeated-query-id", "long"],
)
def test_a_broken_documents_or_queries_split_fails_naming_the_row(
    validated_params, corrupt: Callable[[dict[str, pd.DataFrame]], None], where: str, fragments: list[str]
):
    frames = {"docs": clean_documents(), "questions": clean_queries()}
    corrupt(frames)
    write_raw_split(frames["docs"], raw_split_path("docs", "test"), DOCUMENTS_SCHEMA)
    write_raw_split(frames["questions"], raw_split_path("questions", "test"), QUERIES_SCHEMA)

    with pytest.raises(ValidationFailed) as failed:
        validate.run(validated_params())

    message = str(failed.value)
    for fragment in [f"{where} (data/raw/{where}.parquet): ", *fragments]:
        assert fragment in message
    results = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    assert [f"{s['dataset']}/{s['split']}" for s in results["splits"] if not s["success"]] == [where]


def test_queries_whose_documents_split_was_not_downloaded_fail_naming_its_file(validated_params):
    write_raw_split(clean_queries(), raw_split_path("questions", "test"), QUERIES_SCHEMA)

    with pytest.raises(ValidationFailed) as failed:
        validate.run(validated_params())

    assert (
        "questions/test (data/raw/questions/test.parquet): expect_column_values_to_be_in_set(relevant_unknown) "
        "failed for 3 of 3 rows [Relevant: every relevant id is a document of docs/test, but "
        "data/raw/docs/test.parquet was not downloaded]"
    ) in str(failed.value)


def test_queries_of_several_splits_check_against_the_one_documents_split(validated_params):
    """A documents dataset of one split serves the queries of every split; a split is checked in batches alike."""
    declared = QUESTIONS.replace("splits: [test]", 'splits: {validation: "*dev*", test: "*test*"}')
    write_raw_split(clean_documents(), raw_split_path("docs", "corpus"), DOCUMENTS_SCHEMA)
    for split in ("validation", "test"):
        queries = clean_queries().assign(query=lambda f, split=split: f["query"] + f" ({split})")
        if split == "test":
            queries.at[2, "relevant"] = ["d3", "gone"]
        write_raw_split(queries, raw_split_path("questions", split), QUERIES_SCHEMA)
    cfg = validated_params(DOCS.replace("splits: [test]", "splits: [corpus]"), declared)

    with pytest.raises(ValidationFailed) as failed:
        validate.run(cfg.model_copy(update={"validate_": cfg.validate_.model_copy(update={"batch_rows": 2})}))

    message = str(failed.value)
    assert "[Relevant: every relevant id is a document of docs/corpus]; e.g. row 2: query_id='test-2'" in message
    results = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    assert [f"{s['dataset']}/{s['split']}" for s in results["splits"] if not s["success"]] == ["questions/test"]
