"""Everything embedforge knows about its three built-in datasets, SNLI, STS-B and SICK, in one table.

A built-in needs no ``kind``, ``score_range``, ``license`` or ``columns`` in params.yaml: they are known here, as are
its hub id, its official archive's layout and the native columns that hub, mirror and archive each spell their own
way.
What the hub ids were verified against is in README "Your own data". Pure data: the download backends
(``data.sources``) and the params schema both read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ArchiveFormat = Literal["jsonl", "tsv", "table"]


@dataclass(frozen=True)
class ArchiveLayout:
    """Where a split sits in a built-in's official archive, and how its rows are written.

    ``jsonl``: one JSON object a line, ``fields`` the keys kept; ``tsv``: tab-separated ``fields`` without a
    header; ``table``: one tab-separated table with a header holding every split, told apart by ``split_column``,
    whose values are upper case.
    """

    file: str
    member: str  # the member holding a split; {split} is the archive's name for it
    format: ArchiveFormat
    fields: tuple[str, ...] = ()
    split_names: dict[str, str] = field(default_factory=dict)  # a split's name in the archive, where it differs
    split_column: str | None = None

    def split_name(self, split: str) -> str:
        return self.split_names.get(split, split.upper() if self.split_column else split)


@dataclass(frozen=True)
class BuiltinDataset:
    """One built-in: its kind and scale, where it comes from by default, and how its sources spell it."""

    kind: str
    hub_id: str
    archive: ArchiveLayout
    native_columns: dict[str, tuple[str, ...]]  # each common column's native names, in order of preference
    license: str  # the Hub's licence id, which the model card lists; "other" where its parts differ (license_note)
    license_note: str = ""
    score_range: tuple[float, float] | None = None
    hub_revision: str | None = None
    splits: tuple[str, ...] = ("train", "validation", "test")
    # Columns that scope a native id that repeats across the dataset's source files; joined with it by "-".
    id_scope: tuple[str, ...] = ()
    other_sources: str = ""  # what else to try when its hub id cannot be loaded, beyond mirror and archive

    def known_entry(self) -> dict[str, Any]:
        """What params.yaml may leave out of the built-in's entry: its kind and score range."""
        return {"kind": self.kind, **({"score_range": self.score_range} if self.score_range else {})}

    def source_entry(self) -> dict[str, Any]:
        """Where the built-in comes from by default, as params.yaml spells it."""
        revision = {"hub_revision": self.hub_revision} if self.hub_revision else {}
        return {"hub_id": self.hub_id, **revision, "splits": list(self.splits)}

    def licence_entry(self) -> dict[str, Any]:
        """The built-in's licence, for an entry that reads the built-in's own data."""
        return {"license": self.license}

    def default_entry(self) -> dict[str, Any]:
        """The built-in's download.datasets entry when params.yaml gives none."""
        return {**self.known_entry(), **self.source_entry(), **self.licence_entry()}


OFFICIAL_DEV = {"validation": "dev"}

BUILTINS: dict[str, BuiltinDataset] = {
    "snli": BuiltinDataset(
        kind="pairs_nli",
        hub_id="stanfordnlp/snli",
        archive=ArchiveLayout(
            file="snli_1.0.zip",
            member="snli_1.0_{split}.jsonl",
            format="jsonl",
            fields=("pairID", "sentence1", "sentence2", "gold_label"),
            split_names=OFFICIAL_DEV,
        ),
        native_columns={
            "sentence1": ("premise", "sentence1"),
            "sentence2": ("hypothesis", "sentence2"),
            "label": ("label", "gold_label"),
            "pair_id": ("pairID", "pair_id"),
        },
        license="cc-by-sa-4.0",
    ),
    "stsb": BuiltinDataset(
        kind="pairs_score",
        score_range=(0.0, 5.0),
        hub_id="mteb/stsbenchmark-sts",
        archive=ArchiveLayout(
            file="Stsbenchmark.tar.gz",
            member="sts-{split}.csv",
            format="tsv",
            fields=("genre", "source", "year", "pair_id", "score", "sentence1", "sentence2"),
            split_names=OFFICIAL_DEV,
        ),
        native_columns={
            "sentence1": ("sentence1",),
            "sentence2": ("sentence2",),
            "score": ("score",),
            "genre": ("genre",),
            "pair_id": ("pair_id", "id"),
        },
        license="other",
        license_note=(
            "the similarity scores are CC BY-SA 4.0; the sentences keep their sources' terms (MSR paraphrase and "
            "video corpora: Microsoft Research's; headlines: Europe Media Monitor's; image captions, SNLI and Stack "
            "Exchange answers and forums: CC BY-SA)"
        ),
        # STS-B numbers its pairs per file and year (1,244 distinct ids in 5,749 train rows), so its pair_id is
        # these columns and the id, joined with "-" (e.g. MSRpar-2012train-0012).
        id_scope=("source", "year"),
    ),
    "sick": BuiltinDataset(
        kind="pairs_nli",
        score_range=(1.0, 5.0),
        hub_id="RobZamp/sick",
        hub_revision="refs/convert/parquet",  # the repo is a loading script; datasets>=4 reads the parquet export
        archive=ArchiveLayout(
            file="SICK.zip",
            member="SICK.txt",
            format="table",
            split_names={"train": "TRAIN", "validation": "TRIAL", "test": "TEST"},
            split_column="SemEval_set",
        ),
        native_columns={
            "sentence1": ("sentence_A", "sentence1"),
            "sentence2": ("sentence_B", "sentence2"),
            "label": ("entailment_label", "label"),
            "score": ("relatedness_score", "score"),
            "pair_id": ("pair_ID", "id"),
        },
        license="cc-by-nc-sa-3.0",
        other_sources=(
            "hub_id mteb/sickr-sts, which has the test split only, scored and unlabelled: declare it as "
            "{kind: pairs_score, hub_id: mteb/sickr-sts, score_range: [1, 5], splits: [test]} under another name"
        ),
    ),
}


def alternatives(name: str) -> str:
    """What to try when a built-in's hub id cannot be loaded, besides a mirror; named in the error."""
    builtin = BUILTINS[name]
    archive = (
        f"the official archive (download.datasets.{name}.archive: {builtin.archive.file} with download.source: archive)"
    )
    return f"{archive}, or {builtin.other_sources}" if builtin.other_sources else archive


def builtin_sources() -> dict[str, dict[str, Any]]:
    """download.datasets as params.yaml spells the defaults: where each built-in comes from."""
    return {name: builtin.source_entry() for name, builtin in BUILTINS.items()}


def with_builtin_defaults(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """A built-in's entry with what params.yaml leaves out filled in.

    Its kind and score range always; and where the entry names no source of its own (neither hub_id nor files),
    its whole default entry, so ``archive: snli_1.0.zip`` alone changes that one key. Its licence goes with its
    data: an entry naming another hub id or local files may hold anything, so declaring that licence is the
    user's. A built-in declared with its own ``kind`` is a user dataset under a familiar name: nothing is filled in.
    """
    builtin = BUILTINS.get(name)
    if builtin is None or "kind" in given:
        return given
    if "hub_id" in given or "files" in given:
        licence = builtin.licence_entry() if given.get("hub_id") == builtin.hub_id else {}
        return {**builtin.known_entry(), **licence, **given}
    return {**builtin.default_entry(), **given}
