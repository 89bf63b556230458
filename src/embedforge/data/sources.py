"""Where raw splits come from: the Hugging Face hub, a local mirror, the official archives, or a user's files.

Each source returns a split as frames in the dataset's *native* columns
(``premise``/``hypothesis`` for SNLI, whatever a user's file holds, ...) with a
provenance record; ``normalise`` then maps each frame onto its kind's common schema
through the dataset's column map, so every source shares one code path after loading.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import logging
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from embedforge.config import DatasetSource, DownloadParams
from embedforge.config.datasets import BUILTIN_ALTERNATIVES, KIND_COLUMNS, REQUIRED_COLUMNS
from embedforge.data.readers import BATCH_ROWS, RawBatch, file_format, read_batches
from embedforge.errors import DataError, UserError
from embedforge.files import sha256_file
from embedforge.paths import EXTERNAL_DIR

log = logging.getLogger(__name__)


class SplitNotFound(Exception):
    """The source has no such split; the caller decides whether that split was optional."""


@dataclass
class LoadedSplit:
    batches: Iterable[RawBatch]
    provenance: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    kind: str

    def load(self, dataset: str, split: str) -> LoadedSplit: ...


# A built-in's native columns, in order of preference: hub, mirror and archives spell them differently.
NATIVE_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "snli": {
        "sentence1": ("premise", "sentence1"),
        "sentence2": ("hypothesis", "sentence2"),
        "label": ("label", "gold_label"),
        "pair_id": ("pairID", "pair_id"),
    },
    "stsb": {
        "sentence1": ("sentence1",),
        "sentence2": ("sentence2",),
        "score": ("score",),
        "genre": ("genre",),
        "pair_id": ("pair_id", "id"),
    },
    "sick": {
        "sentence1": ("sentence_A", "sentence1"),
        "sentence2": ("sentence_B", "sentence2"),
        "label": ("entailment_label", "label"),
        "score": ("relatedness_score", "score"),
        "pair_id": ("pair_ID", "id"),
    },
}

# A built-in whose ids repeat across its source files: STS-B numbers its pairs per file and year (1,244 distinct
# ids in 5,749 train rows), so its pair_id is these columns and the id, joined with "-" (e.g. MSRpar-2012train-0012).
ID_SCOPES: dict[str, tuple[str, ...]] = {"stsb": ("source", "year")}

UNLABELLED = {"-", "", "none", "-1"}


def candidates(dataset: str, source: DatasetSource, common: str) -> tuple[str, ...]:
    """The native names that may hold ``common``: the mapped one, a built-in's spellings, or its own name."""
    if common in source.columns:
        return (source.columns[common],)
    if not source.columns and dataset in NATIVE_COLUMNS:
        return NATIVE_COLUMNS[dataset].get(common, ())
    return (common,)


def required_columns(source: DatasetSource) -> list[str]:
    return [
        *REQUIRED_COLUMNS[source.kind],
        *(["score"] if source.has_scores and source.kind != "pairs_score" else []),
        *(["label"] if source.has_labels and source.kind != "pairs_nli" else []),
    ]


def pick_columns(dataset: str, split: str, source: DatasetSource, batch: RawBatch) -> dict[str, str | None]:
    """The native column of every common column; a required (or explicitly mapped) one that is absent is an error."""
    frame = batch.frame
    picked = {
        common: next((name for name in candidates(dataset, source, common) if name in frame.columns), None)
        for common in KIND_COLUMNS[source.kind]
    }
    wanted = [c for c in KIND_COLUMNS[source.kind] if c in required_columns(source) or c in source.columns]
    missing = [common for common in wanted if picked[common] is None]
    if missing:
        found = ", ".join(map(str, frame.columns))
        if source.columns or dataset not in NATIVE_COLUMNS:
            common = missing[0]
            raise DataError(
                f"download.datasets.{dataset}.columns.{common}: {batch.origin} ({dataset}/{split}) has no column "
                f"{candidates(dataset, source, common)[0]!r}; its columns: {found}"
            )
        names = " or ".join(f"'{name}'" for common in missing for name in candidates(dataset, source, common))
        raise DataError(f"{batch.origin}: {dataset}/{split} is missing column {names}; found columns: {found}")
    return picked


def normalise(dataset: str, split: str, batch: RawBatch, source: DatasetSource) -> tuple[pd.DataFrame, int]:
    """Map a native frame onto its kind's common schema; return it and the number of unlabelled rows dropped.

    The frame's index is its rows' positions in the batch (a split column's filter keeps them), so ids and
    errors name the source's own row numbers.
    """
    picked = pick_columns(dataset, split, source, batch)
    frame = batch.frame
    first = batch.earlier_rows + batch.first_row
    ids = pd.Series([f"{split}-{first + row}" for row in frame.index], index=frame.index, dtype="string")
    if source.kind == "sentences":
        out = pd.DataFrame(
            {
                "text_id": frame[picked["text_id"]].astype("string") if picked["text_id"] else ids,
                "text": frame[picked["text"]].astype("string"),
            },
            index=frame.index,
        )
        return out.reset_index(drop=True), 0

    out = pd.DataFrame(index=frame.index)
    out["pair_id"] = frame[picked["pair_id"]].astype("string") if picked["pair_id"] else ids
    scope = [column for column in ID_SCOPES.get(dataset, ()) if column in frame.columns]
    if picked["pair_id"] and scope and not source.columns:
        out["pair_id"] = frame[scope].astype("string").fillna("").agg("-".join, axis=1).astype("string") + (
            "-" + out["pair_id"]
        )
    for text_column in ("sentence1", "sentence2"):
        out[text_column] = frame[picked[text_column]].astype("string")
    labels = map_labels(frame[picked["label"]], source) if picked["label"] else None
    out["label"] = labels
    out["score"] = _numeric(frame, picked["score"], dataset, split, batch) if picked["score"] else None
    out["genre"] = frame[picked["genre"]].astype("string") if picked["genre"] else None
    out = out.astype({"pair_id": "string", "label": "string", "score": "float64", "genre": "string"})

    dropped = 0
    if labels is not None:
        mapped = set((source.labels or {}).values())
        unlabelled = out["label"].isna() | (out["label"].isin(UNLABELLED) & ~out["label"].isin(mapped))
        dropped = int(unlabelled.sum())
        out = out[~unlabelled]
    return out.reset_index(drop=True), dropped


def map_labels(column: pd.Series, source: DatasetSource) -> pd.Series:
    """Native labels as NLI labels through ``labels``; unmapped values stay (lower-cased) for validation to flag."""
    text = column.astype("string").str.strip()
    if not source.labels:
        return text.str.lower()
    return text.map(source.labels, na_action="ignore").fillna(text.str.lower()).astype("string")


def _numeric(frame: pd.DataFrame, column: str, dataset: str, split: str, batch: RawBatch) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna() & (frame[column].astype("string").str.strip() != "")
    if bad.any():
        row = bad.idxmax()
        raise DataError(
            f"{batch.origin}: {dataset}/{split} row {batch.first_row + row}: column '{column}' is not a number: "
            f"{frame[column].loc[row]!r}"
        )
    return values.astype("float64")


class MirrorSource:
    """A directory laid out as ``<dataset>/<split>.parquet`` in the datasets' native columns."""

    kind = "mirror"

    def __init__(self, root: str | Path, params: DownloadParams):
        self.root = Path(root).expanduser()
        self.params = params
        if not self.root.is_dir():
            raise UserError(
                f"download.mirror: directory {self.root} does not exist; point download.mirror "
                f"(or EMBEDFORGE_MIRROR) at a folder holding <dataset>/<split>.parquet"
            )

    def load(self, dataset: str, split: str) -> LoadedSplit:
        path = self.root / dataset / f"{self.params.datasets[dataset].split_sources()[split]}.parquet"
        if not path.is_file():
            raise SplitNotFound(str(path))
        provenance = {"source_file": str(path.resolve()), "source_sha256": sha256_file(path)}
        return LoadedSplit(read_batches(path, "parquet"), provenance)


class HubSource:
    """The Hugging Face hub through ``datasets``; fails fast when the hub cannot be reached."""

    kind = "hub"

    def __init__(self, params: DownloadParams):
        self.params = params
        self._checked = False

    def _check_reachable(self) -> None:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return
        try:
            urllib.request.urlopen(constants.ENDPOINT, timeout=self.params.hub_timeout_s).close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"download.source is 'hub' but {constants.ENDPOINT} cannot be reached ({reason}). "
                f"Point at a local mirror instead: EMBEDFORGE_MIRROR=PATH, or set download.source: mirror "
                f"and download.mirror: PATH (a folder of <dataset>/<split>.parquet)"
            ) from None

    def load(self, dataset: str, split: str) -> LoadedSplit:
        import datasets

        spec = self.params.datasets[dataset]
        local = Path(spec.hub_id).is_dir()
        if not self._checked and not local:
            self._check_reachable()
            self._checked = True
        hub_split = spec.split_sources()[split]
        commit = None if local else self._pinned_commit(dataset, spec)
        try:
            loaded = datasets.load_dataset(
                spec.hub_id, spec.hub_config, split=hub_split, revision=commit or spec.hub_revision
            )
        except ValueError as exc:
            if "split" in str(exc).lower():
                raise SplitNotFound(f"{spec.hub_id}:{hub_split}") from None
            raise DataError(f"hub dataset {spec.hub_id} split {hub_split}: {exc}") from None
        except (OSError, RuntimeError, datasets.exceptions.DatasetsError) as exc:
            raise cannot_load(dataset, spec, exc) from None
        provenance = {
            "hub_id": spec.hub_id,
            "hub_config": spec.hub_config,
            "hub_revision": spec.hub_revision,
            "hub_commit": commit,
            "hub_split": hub_split,
            "hub_fingerprint": loaded._fingerprint,
        }
        return LoadedSplit(_decoded_batches(loaded, spec.hub_id), provenance)

    def _pinned_commit(self, dataset: str, spec: DatasetSource) -> str:
        """The commit ``hub_revision`` (a branch, tag or null: main) points at now, so the manifest pins the data."""
        from huggingface_hub import HfApi

        try:
            return HfApi().dataset_info(spec.hub_id, revision=spec.hub_revision, timeout=self.params.hub_timeout_s).sha
        except OSError as exc:
            raise cannot_load(dataset, spec, exc) from None


def cannot_load(dataset: str, spec: DatasetSource, exc: Exception) -> UserError:
    """Why a hub dataset could not be loaded, and what else to point at."""
    alternatives = BUILTIN_ALTERNATIVES.get(
        dataset, f"local files (download.datasets.{dataset}.files instead of hub_id)"
    )
    revision = f" at revision {spec.hub_revision!r}" if spec.hub_revision else ""
    return UserError(
        f"download.datasets.{dataset}.hub_id: cannot load {spec.hub_id!r}{revision} "
        f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}). "
        f"Alternatives: a local mirror (EMBEDFORGE_MIRROR=PATH holding {dataset}/<split>.parquet), or {alternatives}"
    )


def _decoded_batches(split_data: Any, origin: str) -> Iterator[RawBatch]:
    """The split in frames whose ClassLabel columns hold names; -1, the hub's 'no label', becomes '-'."""
    import datasets

    class_labels = {
        name: feature.names for name, feature in split_data.features.items() if isinstance(feature, datasets.ClassLabel)
    }
    first = 0
    for frame in split_data.to_pandas(batch_size=BATCH_ROWS, batched=True):
        for name, names in class_labels.items():
            frame[name] = frame[name].map(lambda index, names=names: names[index] if index >= 0 else "-")
        yield RawBatch(frame, origin, first)
        first += len(frame)


ARCHIVE_SPLIT_NAMES = {"train": "train", "validation": "dev", "test": "test"}


class ArchiveSource:
    """The official archives: snli_1.0.zip (jsonl), Stsbenchmark.tar.gz (tab-separated), SICK.zip / SICK.txt."""

    kind = "archive"

    def __init__(self, params: DownloadParams):
        self.paths = {name: Path(ds.archive).expanduser() for name, ds in params.datasets.items() if ds.archive}

    def load(self, dataset: str, split: str) -> LoadedSplit:
        path = self.paths[dataset]
        if not path.is_file():
            raise UserError(f"download.datasets.{dataset}.archive: file {path} does not exist")
        reader = {"snli": self._snli, "stsb": self._stsb, "sick": self._sick}[dataset]
        try:
            frame = reader(path, split)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: corrupt or truncated archive ({exc}); download it again") from None
        provenance = {"source_file": str(path.resolve()), "source_sha256": sha256_file(path)}
        return LoadedSplit([RawBatch(frame, str(path))], provenance)

    @staticmethod
    def _member_lines(path: Path, member_suffix: str) -> tuple[str, list[str]]:
        """Decode the archive member whose name ends with ``member_suffix`` as strict UTF-8 lines."""
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith(member_suffix)), None)
                if name is None:
                    raise SplitNotFound(f"{path}:{member_suffix}")
                raw = archive.read(name)
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as archive:
                found = next((m for m in archive.getmembers() if m.name.endswith(member_suffix)), None)
                if found is None:
                    raise SplitNotFound(f"{path}:{member_suffix}")
                name, raw = found.name, archive.extractfile(found).read()
        elif path.name.endswith(member_suffix):
            name, raw = path.name, path.read_bytes()
        else:
            raise DataError(f"{path}: neither a zip nor a tar archive (it may be truncated or corrupt)")
        member = f"{path}:{name}"
        return member, _decode_lines(raw, member)

    def _snli(self, path: Path, split: str) -> pd.DataFrame:
        member, lines = self._member_lines(path, f"snli_1.0_{ARCHIVE_SPLIT_NAMES.get(split, split)}.jsonl")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{member} line {number}: not valid JSON ({exc.msg})") from None
            rows.append({key: record.get(key) for key in ("pairID", "sentence1", "sentence2", "gold_label")})
        return pd.DataFrame(rows, columns=["pairID", "sentence1", "sentence2", "gold_label"])

    def _stsb(self, path: Path, split: str) -> pd.DataFrame:
        member, lines = self._member_lines(path, f"sts-{ARCHIVE_SPLIT_NAMES.get(split, split)}.csv")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 7:
                raise DataError(f"{member} line {number}: expected at least 7 tab-separated fields, got {len(fields)}")
            genre, file, year, pair_id, score, sentence1, sentence2 = fields[:7]
            rows.append(
                {
                    "pair_id": pair_id,
                    "source": file,
                    "year": year,
                    "genre": genre,
                    "score": score,
                    "sentence1": sentence1,
                    "sentence2": sentence2,
                }
            )
        return pd.DataFrame(rows, columns=["pair_id", "source", "year", "genre", "score", "sentence1", "sentence2"])

    def _sick(self, path: Path, split: str) -> pd.DataFrame:
        member, lines = self._member_lines(path, "SICK.txt")
        text = "\n".join(lines)
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
        if "SemEval_set" not in frame.columns:
            raise DataError(f"{member}: missing column 'SemEval_set'; found {', '.join(frame.columns)}")
        official = {"train": "TRAIN", "validation": "TRIAL", "test": "TEST"}.get(split, split.upper())
        selected = frame[frame["SemEval_set"] == official]
        if selected.empty:
            raise SplitNotFound(f"{member}:{official}")
        return selected.reset_index(drop=True)


def _decode_lines(raw: bytes, member: str) -> list[str]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{member} line {line}: bytes {raw[exc.start : exc.end]!r} are not valid UTF-8; re-save the file as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").split("\n")


class FileSource:
    """A user's local files: ``files`` globs, each split's files picked by a glob or rows by ``split_column``.

    Files are read in batches (``readers``), so a corpus of any size streams through.
    """

    kind = "files"

    def __init__(self, dataset: str, spec: DatasetSource):
        self.dataset = dataset
        self.spec = spec
        self.key = f"download.datasets.{dataset}"
        self.paths = self._matched()
        outside = [path for path in self.paths if not path.resolve().is_relative_to(EXTERNAL_DIR.resolve())]
        if outside:
            log.warning(
                "%s.files: %s is outside %s/, so `dvc repro` does not see it change; move or link it there",
                self.key,
                outside[0],
                EXTERNAL_DIR,
            )

    def _matched(self) -> list[Path]:
        patterns = [self.spec.files] if isinstance(self.spec.files, str) else list(self.spec.files or [])
        matched: dict[Path, None] = {}
        for pattern in patterns:
            found = sorted(Path(name) for name in glob.glob(str(Path(pattern).expanduser()), recursive=True))
            files = [path for path in found if path.is_file()]
            if not files:
                raise UserError(f"{self.key}.files: {pattern!r} matches no file (looked from {Path.cwd()})")
            matched.update(dict.fromkeys(files))
        return list(matched)

    def split_paths(self, split: str) -> list[Path]:
        """The files of ``split``: all of them with a split column, else those its glob matches by name or path."""
        if self.spec.split_column is not None:
            return self.paths
        pattern = self.spec.split_sources()[split]
        return [
            path for path in self.paths if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern)
        ]

    def load(self, dataset: str, split: str) -> LoadedSplit:
        paths = self.split_paths(split)
        if not paths:
            raise SplitNotFound(
                f"{self.key}.splits.{split}: {self.spec.split_sources()[split]!r} matches none of the files"
            )
        formats = [file_format(path, self.spec.format, f"{self.key}.format") for path in paths]
        provenance = {
            "source_files": [
                {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)} for path in paths
            ],
        }
        return LoadedSplit(self._batches(split, paths, formats), provenance)

    def _batches(self, split: str, paths: list[Path], formats: list[str]) -> Iterator[RawBatch]:
        column = self.spec.split_column
        earlier_rows = 0
        for path, fmt in zip(paths, formats, strict=True):
            rows_in_file = 0
            for batch in read_batches(path, fmt):
                rows_in_file = batch.first_row + len(batch.frame)
                batch.earlier_rows = earlier_rows
                if column is None:
                    yield batch
                    continue
                if column not in batch.frame.columns:
                    raise DataError(
                        f"{self.key}.split_column: {path} has no column {column!r}; "
                        f"its columns: {', '.join(map(str, batch.frame.columns))}"
                    )
                wanted = self.spec.split_sources()[split]
                rows = batch.frame[column].astype("string") == wanted
                yield RawBatch(batch.frame[rows.fillna(False)], batch.origin, batch.first_row, earlier_rows)
            earlier_rows += rows_in_file


def make_sources(params: DownloadParams) -> dict[str, Source]:
    """Each dataset's source: its files, else the hub, the mirror or the archives as download.source says."""
    shared: Source
    if params.source == "mirror":
        shared = MirrorSource(params.mirror or "", params)
    elif params.source == "archive":
        shared = ArchiveSource(params)
    else:
        shared = HubSource(params)
    return {
        name: FileSource(name, spec) if spec.files is not None else shared for name, spec in params.datasets.items()
    }
