"""A user's own data as the own-data tests write it: a JSONL corpus of tickets and scored pairs in CSV, with the
`--set` overrides that declare them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TICKETS = (
    'download.datasets.tickets={kind: sentences, files: "data/external/tickets/*.jsonl", '
    'columns: {text: body}, splits: {train: "*.jsonl"}}'
)
MY_PAIRS = (
    'download.datasets.my_pairs={kind: pairs_score, files: "data/external/pairs/*.csv", '
    "columns: {sentence1: q1, sentence2: q2, score: sim}, score_range: [0, 1], "
    'splits: {validation: "*dev*", test: "*test*"}}'
)
DOCUMENTS = (
    'download.datasets.manuals={kind: documents, files: "data/external/manuals/*.jsonl", '
    "splits: {train: '*train*', test: '*test*'}}"
)
QUERIES = (
    'download.datasets.questions={kind: queries, files: "data/external/questions.jsonl", documents: manuals, '
    "splits: [test]}"
)
OWN = [TICKETS, MY_PAIRS]


def corpus_texts(mirror: Path) -> list[str]:
    snli = pd.read_parquet(mirror / "snli/train.parquet")
    return list(dict.fromkeys([*snli["premise"], *snli["hypothesis"]]))


def write_tickets(root: Path, texts: list[str]) -> None:
    """Two JSONL files whose text is in a ``body`` column, beside other fields."""
    folder = root / "data/external/tickets"
    folder.mkdir(parents=True, exist_ok=True)
    half = len(texts) // 2
    for name, part in (("a.jsonl", texts[:half]), ("b.jsonl", texts[half:])):
        lines = [json.dumps({"id": f"{name}-{i}", "body": text, "channel": "email"}) for i, text in enumerate(part)]
        (folder / name).write_text("\n".join(lines) + "\n\n", encoding="utf-8")


def write_pairs(root: Path, mirror: Path) -> None:
    """STS-B pairs as CSV with the user's own column names and a 0-1 score."""
    folder = root / "data/external/pairs"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("validation", "dev.csv"), ("train", "test.csv")):
        stsb = pd.read_parquet(mirror / f"stsb/{split}.parquet")
        frame = pd.DataFrame({"q1": stsb["sentence1"], "q2": stsb["sentence2"], "sim": stsb["score"] / 5})
        frame.to_csv(folder / name, index=False)


def write_documents(root: Path, mirror: Path) -> int:
    """Documents of SNLI test premises (the benchmark's synthetic set, small) as two JSONL files, half of them to
    train on and half searched by the queries of that half; returns the number of test queries."""
    from document_set import build

    built = build(mirror / "snli/test.parquet", seed=0, min_sentences=5, max_sentences=10)
    folder = root / "data/external/manuals"
    folder.mkdir(parents=True, exist_ok=True)
    half = len(built.documents) // 2
    for split, part in (("train", built.documents.iloc[:half]), ("test", built.documents.iloc[half:])):
        part.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    searched = set(built.documents["id"].iloc[half:])
    queries = built.queries[[all(i in searched for i in ids) for ids in built.queries["relevant"]]]
    queries.to_json(root / "data/external/questions.jsonl", orient="records", lines=True)
    return len(queries)
