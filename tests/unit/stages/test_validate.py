"""The validate stage: a clean pass writes the report and Data Docs; each broken contract names its row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_raw_split

from embedforge.config import NLI_LABELS, Params, ValidateParams
from embedforge.data.gate import require_passed
from embedforge.data.schema import raw_split_path
from embedforge.errors import DataError, UserError, ValidationFailed
from embedforge.paths import RAW_DIR, VALIDATION_RESULTS_PATH
from embedforge.stages import validate

ROWS = 20
DATASETS = Params().download.datasets


def clean_split(dataset: str, split: str) -> pd.DataFrame:
    """Distinct, well-formed pairs whose texts differ per split, so nothing duplicates or leaks."""
    spec = DATASETS[dataset]
    low, high = spec.score_range or (0.0, 0.0)
    return pd.DataFrame(
        {
            "pair_id": [f"{dataset}-{split}-{i}" for i in range(ROWS)],
            "sentence1": [f"A {split} person number {i} walks a dog." for i in range(ROWS)],
            "sentence2": [f"Someone in {split} example {i} is outside." for i in range(ROWS)],
            "label": [NLI_LABELS[i % 3] if spec.has_labels else None for i in range(ROWS)],
            "score": [low + (high - low) * i / (ROWS - 1) if spec.score_range else None for i in range(ROWS)],
            "genre": ["main-captions" if dataset == "stsb" else None for _ in range(ROWS)],
        }
    )


def test_clean_raw_passes_and_writes_report_and_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for dataset in DATASETS:
        for split in ("train", "validation"):
            write_raw_split(clean_split(dataset, split), raw_split_path(dataset, split))

    metrics = validate.run(Params())

    results = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    assert results["success"] is True
    assert {(split["dataset"], split["split"]) for split in results["splits"]} == {
        (dataset, split) for dataset in DATASETS for split in ("train", "validation")
    }
    assert Path("data/validation/docs/index.html").is_file()
    assert metrics["validate.splits"] == 6
    assert metrics["validate.rows"] == 6 * ROWS
    assert metrics["validate.failed_expectations"] == 0
    assert metrics["validate.expectations"] > 6 * 10
    assert list(Path("data").rglob(".*")) == [], "temporary files left behind"
    require_passed()


def empty_sentence(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    frames["snli", "validation"].loc[3, "sentence1"] = ""


def out_of_range_score(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    frames["stsb", "validation"].loc[2, "score"] = 7.5


def unknown_label(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    frames["snli", "train"].loc[4, "label"] = "maybe"


def leaked_pair(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    train = frames["stsb", "train"]
    validation = frames["stsb", "validation"]
    validation.loc[1, "sentence1"] = "  " + train.loc[5, "sentence1"].upper()
    validation.loc[1, "sentence2"] = train.loc[5, "sentence2"].replace(" ", "   ")


def duplicated_pairs(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    train = frames["sick", "train"]
    train.loc[[6, 7], ["sentence1", "sentence2"]] = train.loc[0, ["sentence1", "sentence2"]].to_list()


def repeated_ids(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    frames["snli", "validation"].loc[[2, 9], "pair_id"] = "snli-validation-0"


@pytest.mark.parametrize(
    ("corrupt", "where", "fragments"),
    [
        (
            empty_sentence,
            "snli/validation",
            ["expect_column_values_to_match_regex(sentence1)", "row 3: pair_id='snli-validation-3', sentence1=''"],
        ),
        (
            out_of_range_score,
            "stsb/validation",
            ["expect_column_values_to_be_between(score)", "row 2: pair_id='stsb-validation-2', score=7.5"],
        ),
        (
            unknown_label,
            "snli/train",
            ["expect_column_values_to_be_in_set(label)", "row 4: pair_id='snli-train-4', label='maybe'"],
        ),
        (leaked_pair, "stsb/validation", ["expect_column_values_to_be_in_set(row_in_train)", "Leakage", "row 1: "]),
        (
            duplicated_pairs,
            "sick/train",
            ["expect_column_values_to_be_in_set(row_repeated)", "Duplicates", "3 of 20 rows", "row 6: "],
        ),
        (
            repeated_ids,
            "snli/validation",
            ["expect_column_values_to_be_in_set(id_repeated)", "3 of 20 rows", "row 0: pair_id='snli-validation-0'"],
        ),
    ],
    ids=["empty-sentence", "score-7.5", "unknown-label", "train-leak", "duplicates", "repeated-ids"],
)
def test_broken_contract_fails_naming_split_expectation_and_row(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    corrupt: Callable[[dict[tuple[str, str], pd.DataFrame]], None],
    where: str,
    fragments: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    dataset = where.split("/")[0]
    frames = {(dataset, split): clean_split(dataset, split) for split in ("train", "validation")}
    corrupt(frames)
    for (_, split), frame in frames.items():
        write_raw_split(frame, raw_split_path(dataset, split))

    with pytest.raises(ValidationFailed) as failure:
        validate.run(Params())

    message = str(failure.value)
    for fragment in [f"{where} (data/raw/{where}.parquet): ", *fragments]:
        assert fragment in message
    results = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    assert results["success"] is False
    assert [f"{s['dataset']}/{s['split']}" for s in results["splits"] if not s["success"]] == [where]
    assert Path("data/validation/docs/index.html").is_file()
    assert list(Path("data").rglob(".*")) == [], "temporary files left behind"
    with pytest.raises(UserError, match="embedforge validate"):
        require_passed()


def test_missing_column_is_reported_not_crashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = raw_split_path("snli", "validation")
    path.parent.mkdir(parents=True)
    clean_split("snli", "validation").drop(columns=["label"]).to_parquet(path, index=False)

    with pytest.raises(
        ValidationFailed, match=r"snli/validation \(data/raw/snli/validation.parquet\): expect_column_to_exist\(label\)"
    ):
        validate.run(Params(validate=ValidateParams(data_docs=False)))


def test_no_raw_splits_asks_for_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="embedforge download") as failure:
        validate.run(Params())
    assert str(RAW_DIR) in str(failure.value)


def test_require_passed_refuses_missing_or_failed_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="run `embedforge validate`"):
        require_passed()

    VALIDATION_RESULTS_PATH.parent.mkdir(parents=True)
    VALIDATION_RESULTS_PATH.write_text(json.dumps({"success": False, "summary": "stsb/validation: bad"}))
    with pytest.raises(UserError, match="stsb/validation: bad"):
        require_passed()


def test_a_split_validated_in_batches_reports_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts, verdicts and failing rows of a split checked a batch at a time are those of the whole split."""
    monkeypatch.chdir(tmp_path)
    frames = {
        (dataset, split): clean_split(dataset, split) for dataset in DATASETS for split in ("train", "validation")
    }
    frames["stsb", "validation"].loc[[2, 17], "score"] = 7.5  # in the first and the last batch
    leaked_pair(frames)
    duplicated_pairs(frames)
    for (dataset, split), frame in frames.items():
        write_raw_split(frame, raw_split_path(dataset, split))
    cfg = Params(validate=ValidateParams(data_docs=False, failed_rows_shown=5, max_duplicate_pair_rate=0.1))

    with pytest.raises(ValidationFailed):
        validate.run(cfg)
    whole = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    with pytest.raises(ValidationFailed):
        validate.run(cfg.model_copy(update={"validate_": cfg.validate_.model_copy(update={"batch_rows": 6})}))
    batched = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))

    assert batched["metrics"] == whole["metrics"] and batched["summary"] == whole["summary"]
    for one, other in zip(whole["splits"], batched["splits"], strict=True):
        for expected, merged in zip(one["expectations"], other["expectations"], strict=True):
            assert merged["success"] == expected["success"], merged
            assert merged["failing_rows"] == expected["failing_rows"], merged
            for key in ("element_count", "unexpected_count", "missing_count"):
                assert merged["observed"].get(key) == expected["observed"].get(key), (merged, key)
    scores = next(s for s in batched["splits"] if (s["dataset"], s["split"]) == ("stsb", "validation"))
    between = next(e for e in scores["expectations"] if e["expectation"] == "expect_column_values_to_be_between")
    assert [row["row"] for row in between["failing_rows"]] == [2, 17]


@pytest.mark.parametrize("batch_rows", [100_000, 6])
def test_a_sentence_column_that_is_entirely_null_is_a_failed_expectation_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    """Null rows fail the not-null check only: they neither crash the row hashing nor count as repeats or leaks."""
    monkeypatch.chdir(tmp_path)
    for split in ("train", "validation"):
        frame = clean_split("sick", split)
        if split == "train":
            frame["sentence1"] = None
        write_raw_split(frame, raw_split_path("sick", split))
    cfg = Params(validate=ValidateParams(data_docs=False, batch_rows=batch_rows))

    with pytest.raises(ValidationFailed, match=r"sick/train .*not_be_null\(sentence1\) failed for 20 of 20 rows"):
        validate.run(cfg)
    results = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))
    failed = [(s["split"], e["expectation"]) for s in results["splits"] for e in s["expectations"] if not e["success"]]
    assert failed == [("train", "expect_column_values_to_not_be_null")]


def test_an_empty_split_fails_validation_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_raw_split(clean_split("sick", "train"), raw_split_path("sick", "train"))
    write_raw_split(clean_split("sick", "validation").head(0), raw_split_path("sick", "validation"))
    cfg = Params(validate=ValidateParams(data_docs=False, batch_rows=6))

    with pytest.raises(ValidationFailed) as failure:
        validate.run(cfg)
    assert (
        "sick/validation (data/raw/sick/validation.parquet): expect_table_row_count_to_be_between() failed "
        "(observed 0) [Rows: a split has at least one (validate.allow_empty_splits: true allows 0)]"
    ) in str(failure.value)
    splits = json.loads(VALIDATION_RESULTS_PATH.read_text(encoding="utf-8"))["splits"]
    counts = {
        s["split"]: e for s in splits for e in s["expectations"] if e["expectation"].startswith("expect_table_row")
    }
    assert counts["train"]["success"] and counts["train"]["observed"]["observed_value"] == ROWS  # 4 batches, summed
    assert not counts["validation"]["success"]

    allowed = cfg.validate_.model_copy(update={"allow_empty_splits": True})
    assert validate.run(cfg.model_copy(update={"validate_": allowed}))["validate.failed_expectations"] == 0
