import json
import logging
import time

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import SLICE_ROWS, leftovers
from official_archives import archive_overrides, official_archives, stsb_tar

from embedforge.data.schema import RAW_COLUMNS, RAW_SCHEMA, pair_keys
from embedforge.errors import DataError, UserError
from embedforge.stages import download


def test_mirror_download_normalises_every_split_and_writes_a_manifest(project, mirror_params, small_mirror):
    metrics = download.run(mirror_params("download.limit=50"))

    for dataset, split in [("snli", "train"), ("snli", "test"), ("stsb", "validation"), ("sick", "train")]:
        table = pq.read_table(project / "data/raw" / dataset / f"{split}.parquet")
        assert table.schema.names == RAW_COLUMNS
        assert table.schema.equals(RAW_SCHEMA, check_metadata=False)
        assert table.num_rows <= 50
    stsb = pd.read_parquet(project / "data/raw/stsb/validation.parquet")
    assert stsb["label"].isna().all() and stsb["score"].between(0, 5).all()
    assert stsb["pair_id"].is_unique and stsb["pair_id"].str.fullmatch(r"[\w.-]+-\w+-\d+").all(), stsb["pair_id"]
    sick = pd.read_parquet(project / "data/raw/sick/train.parquet")
    assert set(sick["label"]) <= {"entailment", "neutral", "contradiction"}

    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert manifest["source"] == "mirror" and manifest["limit"] == 50
    record = manifest["datasets"]["snli"]["validation"]
    assert record["rows"] == 50 and record["source_rows"] == SLICE_ROWS
    assert record["source_file"] == str((small_mirror / "snli/validation.parquet").resolve())
    assert len(record["source_sha256"]) == 64 and len(record["output_sha256"]) == 64
    assert manifest["skipped"] == {"stsb": ["test"], "sick": ["test"]}
    assert metrics["rows.snli.validation"] == 50
    assert leftovers(project) == []


def test_limit_is_a_seeded_sample_that_repeats_exactly(project, mirror_params):
    download.run(mirror_params("download.limit=30"))
    first = (project / "data/raw/snli/train.parquet").read_bytes()
    download.run(mirror_params("download.limit=30"))
    assert (project / "data/raw/snli/train.parquet").read_bytes() == first
    download.run(mirror_params("download.limit=30", "seed=7"))
    assert (project / "data/raw/snli/train.parquet").read_bytes() != first


def test_train_pairs_that_leak_into_validation_are_dropped_and_counted(
    project, small_mirror, mirror_params, tmp_path, caplog
):
    leaky = tmp_path / "leaky"
    for dataset in ("snli", "stsb", "sick"):
        (leaky / dataset).mkdir(parents=True)
        for split in ("train", "validation"):
            (leaky / dataset / f"{split}.parquet").write_bytes(
                (small_mirror / dataset / f"{split}.parquet").read_bytes()
            )
    validation = pd.read_parquet(leaky / "stsb/validation.parquet")
    train = pd.read_parquet(leaky / "stsb/train.parquet")
    already_shared = pair_keys(train).isin(set(pair_keys(validation))).sum()
    leaked = validation.head(4).assign(sentence1=lambda f: f["sentence1"].str.upper())
    pd.concat([train, leaked]).to_parquet(leaky / "stsb/train.parquet", index=False)

    with caplog.at_level(logging.INFO, logger="embedforge.stages.download"):
        metrics = download.run(mirror_params(f"download.mirror={leaky}"))

    record = json.loads((project / "data/raw/manifest.json").read_text())["datasets"]["stsb"]["train"]
    assert record["dropped_eval_overlap"] == already_shared + 4
    assert record["dropped_eval_overlap_by_split"] == {"validation": already_shared + 4}
    assert record["rows"] == len(train) - already_shared
    assert metrics["dropped_eval_overlap.stsb.validation"] == already_shared + 4  # run_stage logs it to MLflow
    assert f"stsb/train: dropped {already_shared + 4} rows that also occur in an evaluation split" in caplog.text
    assert f"({already_shared + 4} in stsb/validation)" in caplog.text
    assert metrics["rows.total"] == sum(
        value for key, value in metrics.items() if key.startswith("rows.") and key != "rows.total"
    )


def test_missing_mirror_directory(project, mirror_params):
    with pytest.raises(UserError, match="download.mirror: directory .*/nowhere does not exist"):
        download.run(mirror_params(f"download.mirror={project / 'nowhere'}"))
    assert not (project / "data").exists() or leftovers(project) == []


def test_parquet_missing_a_column_names_file_and_column(project, small_mirror, mirror_params, tmp_path):
    broken = tmp_path / "broken"
    (broken / "snli").mkdir(parents=True)
    frame = pd.read_parquet(small_mirror / "snli/train.parquet").drop(columns=["hypothesis"])
    frame.to_parquet(broken / "snli/train.parquet", index=False)

    with pytest.raises(DataError) as raised:
        download.run(mirror_params(f"download.mirror={broken}", "download.datasets.snli.splits=[train]"))

    assert "snli/train.parquet" in str(raised.value)
    assert "missing column 'hypothesis' or 'sentence2'" in str(raised.value)
    assert not (project / "data/raw").exists()
    assert leftovers(project) == []


def test_failed_download_keeps_the_previous_raw_data(project, mirror_params):
    download.run(mirror_params("download.limit=20"))
    before = (project / "data/raw/manifest.json").read_bytes()
    with pytest.raises(DataError):
        download.run(mirror_params("download.limit=20", "download.datasets.stsb.splits=[train, dev]"))
    assert (project / "data/raw/manifest.json").read_bytes() == before
    assert leftovers(project) == []


@pytest.fixture
def archives(small_mirror, tmp_path):
    return official_archives(tmp_path, small_mirror)


def test_archives_give_the_same_rows_as_the_mirror(project, mirror_params, archives):
    download.run(mirror_params(*archive_overrides(archives)))

    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert manifest["source"] == "archive"
    assert manifest["datasets"]["snli"]["validation"]["dropped_unlabelled"] == 1
    for dataset, split in [("snli", "validation"), ("stsb", "validation"), ("sick", "validation")]:
        assert manifest["datasets"][dataset][split]["rows"] == SLICE_ROWS
    stsb = pd.read_parquet(project / "data/raw/stsb/train.parquet")
    assert stsb["score"].notna().all() and stsb["genre"].notna().all()
    assert stsb["pair_id"].is_unique  # numbered per source file and year in the archive: the file and year join it
    sick = pd.read_parquet(project / "data/raw/sick/validation.parquet")
    assert set(sick["label"]) <= {"entailment", "neutral", "contradiction"}


def test_non_utf8_csv_names_file_and_line(project, mirror_params, archives, small_mirror, tmp_path):
    archives["stsb"] = stsb_tar(tmp_path / "bad.tar.gz", small_mirror, corrupt_line=5)
    with pytest.raises(DataError) as raised:
        download.run(mirror_params(*archive_overrides(archives)))
    message = str(raised.value)
    assert "bad.tar.gz:stsbenchmark/sts-dev.csv line 5" in message and "not valid UTF-8" in message
    assert not (project / "data/raw").exists() and leftovers(project) == []


@pytest.mark.parametrize("dataset", ["snli", "stsb"])
def test_truncated_archive_is_reported_as_corrupt(project, mirror_params, archives, dataset):
    blob = archives[dataset].read_bytes()
    archives[dataset].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as raised:
        download.run(mirror_params(*archive_overrides(archives)))
    assert str(archives[dataset]) in str(raised.value)
    assert "truncated or corrupt" in str(raised.value) or "corrupt or truncated" in str(raised.value)
    assert not (project / "data/raw").exists() and leftovers(project) == []


# --- the hub code path: real `datasets.load_dataset`, pointed at local folders ---


def test_hub_path_loads_with_datasets_and_decodes_class_labels(project, mirror_params, small_mirror, tmp_path):
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    hub_snli = tmp_path / "hub_snli"
    for split in ("train", "validation"):
        frame = pd.read_parquet(small_mirror / "snli" / f"{split}.parquet").head(40)
        labels = [features["label"].str2int(label) for label in frame["label"]]
        labels[0] = -1  # the hub marks pairs without gold label this way
        records = {"premise": list(frame["premise"]), "hypothesis": list(frame["hypothesis"]), "label": labels}
        datasets.Dataset.from_dict(records, features=features).to_parquet(str(hub_snli / f"{split}.parquet"))

    cfg = mirror_params(
        "download.source=hub",
        f"download.datasets.snli.hub_id={hub_snli}",
        f"download.datasets.stsb.hub_id={small_mirror / 'stsb'}",
        f"download.datasets.sick.hub_id={small_mirror / 'sick'}",
    )
    download.run(cfg)

    snli = pd.read_parquet(project / "data/raw/snli/train.parquet")
    assert len(snli) == 39
    assert set(snli["label"]) <= {"entailment", "neutral", "contradiction"}
    manifest = json.loads((project / "data/raw/manifest.json").read_text())
    assert manifest["datasets"]["snli"]["train"]["hub_id"] == str(hub_snli)
    assert manifest["datasets"]["sick"]["train"]["hub_revision"] == "refs/convert/parquet"
    assert manifest["skipped"]["snli"] == ["test"]


def test_unreachable_hub_fails_fast_with_mirror_advice(project, mirror_params, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    with pytest.raises(UserError) as raised:
        download.run(mirror_params("download.source=hub", "download.hub_timeout_s=2"))
    assert time.perf_counter() - started < 5
    assert "cannot be reached" in str(raised.value) and "EMBEDFORGE_MIRROR" in str(raised.value)
    assert not (project / "data/raw").exists()


def test_a_loading_script_repository_fails_naming_the_alternatives(project, mirror_params, small_mirror, tmp_path):
    """RobZamp/sick is a loading-script repository; datasets 4+ refuses those, and download says what else works."""
    scripted = tmp_path / "sick"
    scripted.mkdir()
    (scripted / "sick.py").write_text("import datasets\n")
    cfg = mirror_params(
        "download.source=hub",
        f"download.datasets.snli.hub_id={small_mirror / 'snli'}",
        f"download.datasets.stsb.hub_id={small_mirror / 'stsb'}",
        f"download.datasets.sick.hub_id={scripted}",
    )
    with pytest.raises(UserError) as raised:
        download.run(cfg)
    message = str(raised.value)
    assert f"download.datasets.sick.hub_id: cannot load '{scripted}' at revision 'refs/convert/parquet'" in message
    assert "Dataset scripts are no longer supported" in message
    for alternative in ("EMBEDFORGE_MIRROR=PATH", "download.datasets.sick.archive: SICK.zip", "mteb/sickr-sts"):
        assert alternative in message
    assert not (project / "data/raw").exists() and leftovers(project) == []
