"""A user's own datasets: any corpus and any evaluation pairs, from local files or a hub id, through the stages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import leftovers
from own_data import OWN, corpus_texts, write_pairs, write_tickets

from embedforge.config import load_params
from embedforge.data import readers
from embedforge.data.schema import RAW_COLUMNS, SENTENCES_COLUMNS, row_keys
from embedforge.errors import DataError, UserError, ValidationFailed
from embedforge.stages import download, validate
from embedforge.stages.evaluate import retrieval_task
from embedforge.training import data as training_data
from embedforge.training.examples import text_ids
from embedforge.training.token_files import TokenStore


@pytest.fixture
def own_files(project: Path, small_mirror: Path) -> Path:
    write_tickets(project, corpus_texts(small_mirror))
    write_pairs(project, small_mirror)
    return project


def test_a_jsonl_corpus_and_csv_pairs_download_to_the_common_schemas(own_files, small_mirror, mirror_params):
    download.run(mirror_params(*OWN))

    tickets = pq.read_table(own_files / "data/raw/tickets/train.parquet")
    assert tickets.schema.names == SENTENCES_COLUMNS
    assert tickets.column("text").to_pylist() == corpus_texts(small_mirror)
    ids = tickets.column("text_id").to_pylist()
    assert ids == [f"train-{row}" for row in range(len(ids))]  # numbered on across a.jsonl and b.jsonl
    pairs = pd.read_parquet(own_files / "data/raw/my_pairs/validation.parquet")
    assert list(pairs.columns) == RAW_COLUMNS
    stsb = pd.read_parquet(small_mirror / "stsb/validation.parquet")
    assert pairs["sentence1"].tolist() == stsb["sentence1"].tolist()
    np.testing.assert_allclose(pairs["score"], stsb["score"] / 5)
    assert pairs["label"].isna().all()

    manifest = json.loads((own_files / "data/raw/manifest.json").read_text())
    record = manifest["datasets"]["tickets"]["train"]
    assert [f["path"] for f in record["source_files"]] == [
        "data/external/tickets/a.jsonl",
        "data/external/tickets/b.jsonl",
    ]
    assert all(len(f["sha256"]) == 64 for f in record["source_files"])
    assert record["rows"] == record["source_rows"] == len(corpus_texts(small_mirror))
    assert manifest["datasets"]["my_pairs"]["test"]["rows"] == len(pd.read_parquet(small_mirror / "stsb/train.parquet"))

    metrics = validate.run(mirror_params(*OWN))
    assert metrics["validate.failed_expectations"] == 0
    results = json.loads((own_files / "data/validation/results.json").read_text())
    assert {"tickets/train", "my_pairs/validation", "my_pairs/test"} <= {
        f"{s['dataset']}/{s['split']}" for s in results["splits"]
    }


def test_a_txt_corpus_gets_a_seeded_validation_fraction(project, small_mirror, mirror_params):
    texts = corpus_texts(small_mirror)
    corpus = project / "data/external/corpus.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text("\n".join(texts[:50]) + "\n\n   \n" + "\n".join(texts[50:] + texts[:10]) + "\n")
    declared = (
        'download.datasets.notes={kind: sentences, files: "data/external/corpus.txt", '
        "splits: [train], validation_fraction: 0.2}"
    )

    download.run(mirror_params(declared))
    train_texts = pd.read_parquet(project / "data/raw/notes/train.parquet")["text"]
    held_out = pd.read_parquet(project / "data/raw/notes/validation.parquet")["text"]
    manifest = json.loads((project / "data/raw/manifest.json").read_text())

    assert sorted([*train_texts, *held_out]) == sorted(texts + texts[:10])  # blank lines skipped, nothing lost
    assert set(train_texts).isdisjoint(held_out)  # a repeated line lands on one side
    assert 0.1 < len(held_out) / len(texts) < 0.3
    assert manifest["datasets"]["notes"]["validation"] == {
        "carved_from": "train",
        "validation_fraction": 0.2,
        **{key: manifest["datasets"]["notes"]["validation"][key] for key in ("rows", "output", "output_sha256")},
    }
    first = (project / "data/raw/notes/validation.parquet").read_bytes()
    download.run(mirror_params(declared))
    assert (project / "data/raw/notes/validation.parquet").read_bytes() == first
    download.run(mirror_params(declared, "seed=7"))
    assert (project / "data/raw/notes/validation.parquet").read_bytes() != first


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl.gz", "txt"])
def test_every_file_format_gives_the_same_corpus(project, small_mirror, mirror_params, fmt):
    texts = corpus_texts(small_mirror)
    path = project / f"data/external/corpus.{fmt}"
    path.parent.mkdir(parents=True)
    frame = pd.DataFrame({"sentence": texts})
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt in ("csv", "tsv"):
        frame.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"sentence": text}) + "\n" for text in texts)
    else:
        path.write_text("\n".join(texts) + "\n")
    columns = "" if fmt == "txt" else ", columns: {text: sentence}"
    download.run(
        mirror_params(f'download.datasets.corpus={{kind: sentences, files: "{path}"{columns}, splits: [train]}}')
    )
    assert pd.read_parquet(project / "data/raw/corpus/train.parquet")["text"].tolist() == texts


def test_a_corpus_streams_through_in_batches_with_the_same_result(own_files, mirror_params, monkeypatch):
    cfg = mirror_params(*OWN, "download.limit=50")
    download.run(cfg)
    whole = {name: (own_files / f"data/raw/{name}").read_bytes() for name in ("tickets/train.parquet",)}
    frames = {name: pd.read_parquet(own_files / f"data/raw/{name}") for name in ("tickets/train.parquet",)}
    monkeypatch.setattr(readers, "BATCH_ROWS", 7)
    monkeypatch.setattr(download, "BATCH_ROWS", 7)
    download.run(cfg)
    for name, frame in frames.items():
        streamed = pd.read_parquet(own_files / f"data/raw/{name}")
        pd.testing.assert_frame_equal(streamed, frame)
        assert pq.ParquetFile(own_files / f"data/raw/{name}").metadata.num_row_groups > 1
        assert (own_files / f"data/raw/{name}").read_bytes() != whole[name]  # really written in several batches


def test_the_streamed_limit_draws_the_rows_pandas_sample_draws():
    frame = pd.DataFrame({"row": range(1000)})
    expected = frame.sample(n=37, random_state=42).sort_index().index.to_numpy()
    assert (np.flatnonzero(download.sample_mask(1000, 37, 42)) == expected).all()
    assert download.sample_mask(30, 37, 42) is None


def test_a_hub_dataset_maps_our_splits_onto_its_own(project, mirror_params, small_mirror, tmp_path):
    hub = tmp_path / "hub_pairs"
    hub.mkdir()
    stsb = pd.read_parquet(small_mirror / "stsb/validation.parquet")
    stsb.rename(columns={"sentence1": "q1", "sentence2": "q2", "score": "sim"}).to_parquet(
        hub / "test.parquet",
        index=False,  # the hub calls it test; we evaluate on it as validation
    )
    declared = (
        f"download.datasets.my_pairs={{kind: pairs_score, hub_id: {hub}, hub_config: null, hub_revision: null, "
        "columns: {sentence1: q1, sentence2: q2, score: sim}, score_range: [0, 5], splits: {validation: test}}"
    )
    builtins = [f"download.datasets.{name}.hub_id={small_mirror / name}" for name in ("snli", "stsb", "sick")]
    download.run(mirror_params(declared, "download.source=hub", *builtins))

    record = json.loads((project / "data/raw/manifest.json").read_text())["datasets"]["my_pairs"]["validation"]
    assert record["hub_id"] == str(hub) and record["hub_split"] == "test" and record["hub_commit"] is None
    assert pd.read_parquet(project / "data/raw/my_pairs/validation.parquet")["sentence2"].tolist() == list(
        stsb["sentence2"]
    )


def test_scored_pairs_train_infonce_above_their_own_threshold(own_files, mirror_params):
    cfg = mirror_params(*OWN, "download.datasets.my_pairs.similar_min_score=0.8", "train.datasets=[my_pairs]")
    download.run(cfg)
    path = own_files / "data/raw/my_pairs/validation.parquet"
    pairs = pd.read_parquet(path)
    texts = pd.concat([pairs["sentence1"], pairs["sentence2"]])
    ids = np.unique(text_ids(texts).to_numpy(dtype="S32"))  # a store of one token a sentence: only ids matter
    store = TokenStore(ids, np.zeros(len(ids), np.int64), np.ones(len(ids), np.int32), np.ones(1, np.int32))
    examples = training_data.examples_of(cfg, store, [path])["my_pairs"]
    assert len(examples) == (pairs["score"] >= 0.8).sum() > 0


def test_retrieval_on_scored_pairs_takes_the_similar_ones_as_relevant():
    frame = pd.DataFrame(
        {
            "sentence1": ["a", "a", "b", "c"],
            "sentence2": ["x", "y", "z", "x"],
            "label": [None] * 4,
            "score": [0.9, 0.1, 0.85, 0.5],
        }
    )
    queries, corpus, relevant = retrieval_task(frame, similar_min_score=0.8)
    assert queries == ["a", "b"] and corpus == ["x", "y", "z"] and relevant == [[0], [2]]


# --- errors a user can act on ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evaluate.sts_splits=[tickets/validation]"], r"evaluate.sts_splits: tickets is a sentences dataset"),
        (["train.datasets=[tickets]"], r"train.datasets: tickets is a sentences dataset .*InfoNCE trains on pairs"),
        (["evaluate.retrieval_split=tickets/train"], r"evaluate.retrieval_split: tickets is a sentences dataset"),
        (
            ["evaluate.separation_splits=[my_pairs/validation]"],
            (
                r"evaluate.similar_min_score \(4.0\) is outside download.datasets.my_pairs.score_range \[0, 1\]: "
                r"set download.datasets.my_pairs.similar_min_score"
            ),
        ),
        (["precompute.datasets=[tickets, nothing]"], r"precompute.datasets: dataset 'nothing' is not declared"),
        (["download.datasets.my_pairs.columns.text=body"], r"columns: text is not a column of a pairs_score dataset"),
        (["download.datasets.my_pairs.score_range=null"], r"download.datasets.my_pairs: score_range: required"),
        (["download.datasets.tickets.hub_id=org/name"], r"give exactly one of hub_id .* and files"),
        (["download.datasets.tickets.archive=x.zip"], r"download.datasets.tickets.archive: archives are read for"),
        (
            ['download.datasets.tokenizer={kind: sentences, files: "a.txt", splits: [train]}'],
            r"download.datasets.tokenizer: the name is taken by a pipeline folder",
        ),
    ],
    ids=[
        "sts-on-sentences",
        "infonce-on-sentences",
        "retrieval-on-sentences",
        "threshold",
        "undeclared",
        "column-key",
        "no-score-range",
        "hub-and-files",
        "archive",
        "reserved-name",
    ],
)
def test_a_dataset_named_where_its_kind_cannot_serve_is_a_config_error(project, overrides, message):
    with pytest.raises(UserError, match=message):
        load_params(project / "params.yaml", [*OWN, *overrides])


def test_a_missing_column_names_the_key_file_and_columns(own_files, mirror_params):
    with pytest.raises(DataError) as raised:
        download.run(mirror_params(*OWN, "download.datasets.my_pairs.columns.score=similarity"))
    message = str(raised.value)
    assert "download.datasets.my_pairs.columns.score: data/external/pairs/dev.csv (my_pairs/validation)" in message
    assert "has no column 'similarity'; its columns: q1, q2, sim" in message
    assert not (own_files / "data/raw").exists() and leftovers(own_files) == []


def test_a_glob_matching_no_file_names_the_key(own_files, mirror_params):
    with pytest.raises(UserError, match=r"download.datasets.tickets.files: 'data/external/none/\*.jsonl' matches no"):
        download.run(mirror_params(*OWN, "download.datasets.tickets.files=data/external/none/*.jsonl"))


def test_a_bad_json_line_and_a_non_number_score_name_file_and_row(own_files, mirror_params):
    with (own_files / "data/external/tickets/b.jsonl").open("a") as handle:
        handle.write('{"body": "fine"}\n{"body": unquoted}\n')
    with pytest.raises(DataError, match=r"data/external/tickets/b.jsonl line \d+: not valid JSON"):
        download.run(mirror_params(*OWN))

    write_tickets(own_files, ["A ticket."])
    pairs = own_files / "data/external/pairs/dev.csv"
    pairs.write_text(pairs.read_text().replace("\n", "\nA,B,high\n", 1))
    with pytest.raises(DataError, match=r"dev.csv: my_pairs/validation row 0: column 'sim' is not a number: 'high'"):
        download.run(mirror_params(*OWN))


def test_a_score_outside_the_range_fails_validation_naming_the_row(own_files, mirror_params):
    pairs = own_files / "data/external/pairs/dev.csv"
    frame = pd.read_csv(pairs)
    frame.loc[3, "sim"] = 4.2  # the 0-5 scale slipped in
    frame.to_csv(pairs, index=False)
    download.run(mirror_params(*OWN))
    with pytest.raises(ValidationFailed) as failed:
        validate.run(mirror_params(*OWN))
    message = str(failed.value)
    assert "my_pairs/validation (data/raw/my_pairs/validation.parquet): expect_column_values_to_be_between(score)" in (
        message
    )
    assert "[Scores: within download.datasets.my_pairs.score_range [0, 1]]" in message
    assert "row 3: pair_id='validation-3', score=4.2" in message


def test_a_label_outside_the_mapping_fails_validation(project, small_mirror, mirror_params):
    snli = pd.read_parquet(small_mirror / "snli/validation.parquet")
    codes = snli["label"].map({"entailment": 0, "neutral": 1, "contradiction": 2}).fillna(1).astype(int)
    codes.iloc[5] = 7
    folder = project / "data/external/nli"
    folder.mkdir(parents=True)
    pd.DataFrame({"premise": snli["premise"], "hypothesis": snli["hypothesis"], "y": codes}).to_csv(
        folder / "dev.tsv", sep="\t", index=False
    )
    declared = (
        'download.datasets.my_nli={kind: pairs_nli, files: "data/external/nli/*.tsv", '
        "columns: {sentence1: premise, sentence2: hypothesis, label: y}, "
        "labels: {0: entailment, 1: neutral, 2: contradiction}, splits: {validation: dev.tsv}}"
    )
    download.run(mirror_params(declared))
    raw = pd.read_parquet(project / "data/raw/my_nli/validation.parquet")
    assert set(raw["label"].drop(index=5)) <= {"entailment", "neutral", "contradiction"}
    with pytest.raises(ValidationFailed) as failed:
        validate.run(mirror_params(declared))
    message = str(failed.value)
    assert "my_nli/validation (data/raw/my_nli/validation.parquet): expect_column_values_to_be_in_set(label)" in message
    assert "download.datasets.my_nli.labels maps the data's own values onto them" in message
    assert "row 5: pair_id='validation-5', label='7'" in message


def test_a_validation_sentence_repeated_in_train_is_leakage(project, mirror_params):
    folder = project / "data/external/notes"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("One sentence.\nTwo sentences.\nThree sentences.\n")
    (folder / "dev.txt").write_text("A new one.\n  two   SENTENCES.\n")
    declared = (
        'download.datasets.notes={kind: sentences, files: "data/external/notes/*.txt", '
        'splits: {train: "train.txt", validation: "dev.txt"}}'
    )
    download.run(mirror_params(declared))
    kept = pd.read_parquet(project / "data/raw/notes/train.parquet")
    assert kept["text"].tolist() == ["One sentence.", "Three sentences."]
    assert (
        json.loads((project / "data/raw/manifest.json").read_text())["datasets"]["notes"]["train"][
            "dropped_eval_overlap"
        ]
        == 1
    )
    assert row_keys(kept).tolist() == ["one sentence.", "three sentences."]

    download.run(mirror_params(declared, "download.drop_eval_overlap_from_train=false"))
    with pytest.raises(ValidationFailed, match=r"notes/validation .*row_in_train.*row 1: text_id='validation-1'"):
        validate.run(mirror_params(declared, "download.drop_eval_overlap_from_train=false"))


def test_a_split_column_picks_each_rows_split(project, small_mirror, mirror_params, tmp_path, caplog):
    stsb = pd.read_parquet(small_mirror / "stsb/validation.parquet")
    sets = np.where(np.arange(len(stsb)) % 4 == 0, "dev", "train")
    outside = tmp_path / "elsewhere/pairs.csv"  # not under data/external: loads, with a warning
    outside.parent.mkdir()
    stsb.drop(columns=["pair_id"]).assign(set=sets).to_csv(outside, index=False)
    declared = (
        f'download.datasets.scored={{kind: pairs_score, files: "{outside}", score_range: [0, 5], '
        "split_column: set, splits: {train: train, validation: dev}}"
    )
    download.run(mirror_params(declared, "download.drop_eval_overlap_from_train=false"))

    held_out = pd.read_parquet(project / "data/raw/scored/validation.parquet")
    assert held_out["sentence1"].tolist() == stsb["sentence1"][sets == "dev"].tolist()
    assert held_out["pair_id"].tolist() == [f"validation-{i}" for i in np.flatnonzero(sets == "dev")]
    assert len(pd.read_parquet(project / "data/raw/scored/train.parquet")) == (sets == "train").sum()
    assert "is outside data/external/, so `dvc repro` does not see it change" in caplog.text
