"""A corpus of bad inputs, each met as a user meets it, through the command line: a non-zero exit, one message
naming the file, row or key, no traceback, and nothing written that a later stage could take for good data."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO_ROOT
from official_archives import official_archives
from typer.testing import CliRunner

from embedforge.cli import app
from embedforge.data.gate import require_passed
from embedforge.errors import UserError

Corrupt = Callable[[Path, Path], None]  # (mirror copy, project) -> None


@dataclass(frozen=True)
class BadInput:
    name: str
    corrupt: Corrupt
    stage: str  # the command that must refuse it; "validate" runs download first, which must accept it
    message: str
    overrides: tuple[str, ...] = ()


def edit(dataset: str, split: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Corrupt:
    """Rewrite one mirror file through ``change`` (which may edit the frame in place)."""

    def corrupt(mirror: Path, project: Path) -> None:
        path = mirror / dataset / f"{split}.parquet"
        frame = pd.read_parquet(path)
        changed = change(frame)
        (frame if changed is None else changed).to_parquet(path, index=False)

    return corrupt


def set_cell(column: str, value: object, rows: slice | list[int] = slice(0, 1)) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        if not isinstance(value, str) and frame[column].dtype != object:
            frame[column] = frame[column].astype(object)
        frame.loc[frame.index[rows], column] = value

    return change


def replace_file(dataset: str, split: str, content: Callable[[bytes], bytes]) -> Corrupt:
    def corrupt(mirror: Path, project: Path) -> None:
        path = mirror / dataset / f"{split}.parquet"
        path.write_bytes(content(path.read_bytes()))

    return corrupt


def remove(relative: str) -> Corrupt:
    def corrupt(mirror: Path, project: Path) -> None:
        target = mirror / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return corrupt


def params_text(text: str | bytes) -> Corrupt:
    def corrupt(mirror: Path, project: Path) -> None:
        path = project / "params.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return corrupt


def drop_params(mirror: Path, project: Path) -> None:
    (project / "params.yaml").unlink()


def truncated_archive(dataset: str) -> Corrupt:
    """The official archives in ``project/archives``, ``dataset``'s cut to half its bytes, as a broken download;
    the project's params.yaml, whose datasets the archive overrides extend."""

    def corrupt(mirror: Path, project: Path) -> None:
        shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
        (project / "archives").mkdir()
        archive = official_archives(project / "archives", mirror)[dataset]
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])

    return corrupt


ARCHIVES = (
    "download.limit=40",
    "tracking.enabled=false",
    "download.source=archive",
    "download.datasets.snli.archive=archives/snli_1.0.zip",
    "download.datasets.stsb.archive=archives/Stsbenchmark.tar.gz",
    "download.datasets.sick.archive=archives/SICK.txt",
)


def no_change(mirror: Path, project: Path) -> None:
    """The input is bad through the overrides alone."""


def leak_validation_into_train(mirror: Path, project: Path) -> None:
    validation = pd.read_parquet(mirror / "stsb/validation.parquet")
    train = pd.read_parquet(mirror / "stsb/train.parquet")
    pd.concat([validation.head(3), train]).to_parquet(mirror / "stsb/train.parquet", index=False)


def duplicate_train_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.head(20)], ignore_index=True)


MB_SENTENCE = "word " * 200_000
CASES = [
    # the data, refused by download
    BadInput("missing-column", edit("stsb", "validation", lambda f: f.drop(columns=["score"])), "download", "score"),
    BadInput(
        "renamed-columns",
        edit("snli", "train", lambda f: f.rename(columns={"premise": "text"})),
        "download",
        "premise",
    ),
    BadInput("truncated-parquet", replace_file("sick", "train", lambda b: b[: len(b) // 2]), "download", "sick"),
    BadInput("not-parquet", replace_file("sick", "validation", lambda b: b"a,b\n1,2\n"), "download", "sick"),
    BadInput("empty-file", replace_file("stsb", "train", lambda b: b""), "download", "stsb"),
    BadInput("missing-dataset-folder", remove("stsb"), "download", "stsb"),
    BadInput("missing-split-file", remove("snli/validation.parquet"), "download", "snli"),
    BadInput("truncated-zip", truncated_archive("snli"), "download", "snli_1.0.zip: ", ARCHIVES),
    BadInput("truncated-tar", truncated_archive("stsb"), "download", "Stsbenchmark.tar.gz: ", ARCHIVES),
    BadInput(
        "score-as-text",
        edit("stsb", "train", lambda f: f.assign(score=f["score"].astype(str) + " points")),
        "download",
        "score",
    ),
    # the data, accepted by download and refused by validate
    BadInput("nan-score", edit("stsb", "validation", set_cell("score", math.nan)), "validate", "not_be_null(score)"),
    BadInput("inf-score", edit("stsb", "validation", set_cell("score", math.inf)), "validate", "be_between(score)"),
    BadInput("score-7.5", edit("stsb", "train", set_cell("score", 7.5)), "validate", "score=7.5"),
    BadInput("negative-score", edit("sick", "train", set_cell("relatedness_score", -1.0)), "validate", "score=-1.0"),
    BadInput("empty-text", edit("snli", "train", set_cell("premise", "")), "validate", "sentence1=''"),
    BadInput(
        "whitespace-text", edit("snli", "validation", set_cell("hypothesis", "   ")), "validate", "sentence2='   '"
    ),
    BadInput("null-sentence", edit("stsb", "train", set_cell("sentence2", None)), "validate", "not_be_null(sentence2)"),
    BadInput(
        "all-null-column",
        edit("sick", "train", set_cell("sentence_A", None, slice(None))),
        "validate",
        "not_be_null(sentence1) failed for",
    ),
    BadInput("1mb-sentence", edit("stsb", "train", set_cell("sentence1", MB_SENTENCE)), "validate", "lengths_to_be"),
    BadInput("label-typo", edit("snli", "train", set_cell("label", "entailmnet")), "validate", "label='entailmnet'"),
    BadInput(
        "train-eval-leak",
        leak_validation_into_train,
        "validate",
        "Leakage",
        ("download.drop_eval_overlap_from_train=false",),
    ),
    BadInput("duplicated-pairs", edit("stsb", "train", duplicate_train_pairs), "validate", "Duplicates"),
    BadInput(
        "duplicated-pair-ids",
        edit("sick", "train", set_cell("pair_ID", 42, slice(None))),
        "validate",
        "Ids: every pair_id occurs once in its split",
    ),
    BadInput("empty-split", edit("sick", "validation", lambda f: f.head(0)), "validate", "(observed 0)"),
    # the params
    BadInput("unknown-key", no_change, "download", "download.limti: unknown key", ("download.limti=5",)),
    BadInput("bool-for-count", no_change, "download", "download.limit: must be a number", ("download.limit=true",)),
    BadInput(
        "text-for-count", no_change, "download", "download.limit: must be a whole number", ('download.limit="9"',)
    ),
    BadInput("out-of-range", no_change, "download", "download.limit: must be > 0, got -4", ("download.limit=-4",)),
    BadInput("preset-typo", no_change, "download", "preset: must be one of", ("preset=developmnet",)),
    BadInput(
        "unknown-kind", no_change, "download", "download.datasets.stsb.kind", ("download.datasets.stsb.kind=pear",)
    ),
    BadInput(
        "malformed-set", no_change, "download", "--set 'download.limit': expected dotted.key=value", ("download.limit",)
    ),
    BadInput("control-character", no_change, "download", "value is not valid YAML", ("report.title=\x1b",)),
    BadInput("yaml-syntax", params_text("download: {limit: [1, 2\n"), "download", "params.yaml: not valid YAML"),
    BadInput("empty-params", params_text("  \n"), "download", "params.yaml: empty"),
    BadInput("missing-params", drop_params, "download", "params.yaml: params file not found"),
    BadInput("not-utf8", params_text(b"download:\n  limit: \xff\n"), "download", "params.yaml: not UTF-8 text"),
    BadInput("list-at-top", params_text("- download\n- train\n"), "download", "expected a mapping of sections"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_exits_non_zero_with_one_message_and_writes_nothing_to_trust(case, project, small_mirror):
    mirror = project / "mirror"
    shutil.copytree(small_mirror, mirror)
    (project / "params.yaml").write_text("download:\n  limit: 40\ntracking:\n  enabled: false\n")
    case.corrupt(mirror, project)
    settings = ["--set=download.source=mirror", f"--set=download.mirror={mirror}"]
    settings += [f"--set={item}" for item in case.overrides]
    runner = CliRunner()

    if case.stage == "validate":
        downloaded = runner.invoke(app, ["download", *settings])
        assert downloaded.exit_code == 0, downloaded.output
    before = {path: path.stat().st_mtime_ns for path in project.rglob("*") if path.is_file()}
    refused = runner.invoke(app, [case.stage, *settings])

    assert isinstance(refused.exception, SystemExit), f"not a user error: {refused.exception!r}\n{refused.output}"
    assert refused.exit_code == (3 if case.stage == "validate" else 2), refused.output
    assert refused.output.count("error: ") == 1 and "Traceback" not in refused.output, refused.output
    assert case.message in refused.output, refused.output
    written = {path for path in project.rglob("*") if path.is_file() and before.get(path) != path.stat().st_mtime_ns}
    if case.stage == "validate":  # its report of what failed, which the later stages refuse
        assert {path.relative_to(project).parts[:2] for path in written} <= {("data", "validation")}, written
        with pytest.raises(UserError, match="embedforge validate"):
            require_passed()
    else:
        assert written == set() and not (project / "data/raw").exists(), written
    assert not [path for path in project.rglob("*.tmp")], "a temporary file was left behind"
