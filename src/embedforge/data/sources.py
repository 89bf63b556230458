"""Where raw splits come from: the Hugging Face hub, a local mirror, or the official archives.

Each source returns a split as a DataFrame in the dataset's *native* columns
(``premise``/``hypothesis`` for SNLI, ``sentence_A``/``sentence_B`` for SICK, ...)
together with a provenance record; ``normalise`` then maps any of them onto
the common raw schema, so the three sources share one code path after loading.
"""

from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.config import DownloadParams
from embedforge.data.schema import RAW_COLUMNS
from embedforge.errors import DataError, UserError
from embedforge.files import sha256_file


class SplitNotFound(Exception):
    """The source has no such split; the caller decides whether that split was optional."""


@dataclass
class LoadedSplit:
    frame: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    kind: str

    def load(self, dataset: str, split: str) -> LoadedSplit: ...


@dataclass(frozen=True)
class ColumnMap:
    """Native column names, in order of preference, for each common column."""

    sentence1: tuple[str, ...]
    sentence2: tuple[str, ...]
    label: tuple[str, ...] = ()
    score: tuple[str, ...] = ()
    genre: tuple[str, ...] = ()
    pair_id: tuple[str, ...] = ()

    def required(self) -> list[str]:
        return ["sentence1", "sentence2"] + [name for name in ("label", "score") if getattr(self, name)]


NATIVE_COLUMNS: dict[str, ColumnMap] = {
    "snli": ColumnMap(
        sentence1=("premise", "sentence1"),
        sentence2=("hypothesis", "sentence2"),
        label=("label", "gold_label"),
        pair_id=("pairID", "pair_id"),
    ),
    "stsb": ColumnMap(
        sentence1=("sentence1",),
        sentence2=("sentence2",),
        score=("score",),
        genre=("genre",),
        pair_id=("pair_id", "id"),
    ),
    "sick": ColumnMap(
        sentence1=("sentence_A",),
        sentence2=("sentence_B",),
        label=("entailment_label", "label"),
        score=("relatedness_score",),
        pair_id=("pair_ID", "id"),
    ),
}

UNLABELLED = {"-", "", "none", "-1"}


def normalise(dataset: str, split: str, frame: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, int]:
    """Map a native frame onto the common schema; return it and the number of unlabelled rows dropped."""
    columns = NATIVE_COLUMNS[dataset]
    picked: dict[str, str | None] = {}
    for common in RAW_COLUMNS:
        candidates = getattr(columns, common)
        picked[common] = next((name for name in candidates if name in frame.columns), None)
    missing = [common for common in columns.required() if picked[common] is None]
    if missing:
        wanted = " or ".join(f"'{name}'" for common in missing for name in getattr(columns, common))
        raise DataError(
            f"{origin}: {dataset}/{split} is missing column {wanted}; "
            f"found columns: {', '.join(map(str, frame.columns))}"
        )

    out = pd.DataFrame(index=frame.index)
    out["pair_id"] = (
        frame[picked["pair_id"]].astype("string")
        if picked["pair_id"]
        else pd.Series([f"{split}-{i}" for i in range(len(frame))], index=frame.index, dtype="string")
    )
    for text_column in ("sentence1", "sentence2"):
        out[text_column] = frame[picked[text_column]].astype("string")
    out["label"] = frame[picked["label"]].astype("string").str.strip().str.lower() if picked["label"] else None
    out["score"] = _numeric(frame, picked["score"], dataset, split, origin) if picked["score"] else None
    out["genre"] = frame[picked["genre"]].astype("string") if picked["genre"] else None
    out = out.astype({"pair_id": "string", "label": "string", "score": "float64", "genre": "string"})

    dropped = 0
    if picked["label"]:
        unlabelled = out["label"].isna() | out["label"].isin(UNLABELLED)
        dropped = int(unlabelled.sum())
        out = out[~unlabelled]
    return out.reset_index(drop=True), dropped


def _numeric(frame: pd.DataFrame, column: str, dataset: str, split: str, origin: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{origin}: {dataset}/{split} row {row}: column '{column}' is not a number: {frame[column].iloc[row]!r}"
        )
    return values.astype("float64")


class MirrorSource:
    """A directory laid out as ``<dataset>/<split>.parquet`` in the datasets' native columns."""

    kind = "mirror"

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(
                f"download.mirror: directory {self.root} does not exist; point download.mirror "
                f"(or EMBEDFORGE_MIRROR) at a folder holding <dataset>/<split>.parquet"
            )

    def load(self, dataset: str, split: str) -> LoadedSplit:
        path = self.root / dataset / f"{split}.parquet"
        if not path.is_file():
            raise SplitNotFound(str(path))
        try:
            frame = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        return LoadedSplit(frame, {"source_file": str(path.resolve()), "source_sha256": sha256_file(path)})


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
        if not self._checked and not Path(spec.hub_id).is_dir():
            self._check_reachable()
            self._checked = True
        try:
            loaded = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split, revision=spec.hub_revision)
        except ValueError as exc:
            if "split" in str(exc).lower():
                raise SplitNotFound(f"{spec.hub_id}:{split}") from None
            raise DataError(f"hub dataset {spec.hub_id} split {split}: {exc}") from None
        except OSError as exc:
            raise UserError(f"download.datasets.{dataset}.hub_id: cannot load {spec.hub_id!r} ({exc})") from None
        provenance = {
            "hub_id": spec.hub_id,
            "hub_config": spec.hub_config,
            "hub_revision": spec.hub_revision,
            "hub_fingerprint": loaded._fingerprint,
        }
        return LoadedSplit(_decode_class_labels(loaded), provenance)


def _decode_class_labels(split_data: Any) -> pd.DataFrame:
    """The split as a frame whose ClassLabel columns hold names; -1, the hub's 'no label', becomes '-'."""
    import datasets

    frame = split_data.to_pandas()
    for name, feature in split_data.features.items():
        if isinstance(feature, datasets.ClassLabel):
            names = feature.names
            frame[name] = frame[name].map(lambda index, names=names: names[index] if index >= 0 else "-")
    return frame


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
        return LoadedSplit(frame, {"source_file": str(path.resolve()), "source_sha256": sha256_file(path)})

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
            genre, _file, _year, pair_id, score, sentence1, sentence2 = fields[:7]
            rows.append(
                {"pair_id": pair_id, "genre": genre, "score": score, "sentence1": sentence1, "sentence2": sentence2}
            )
        return pd.DataFrame(rows, columns=["pair_id", "genre", "score", "sentence1", "sentence2"])

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


def make_source(params: DownloadParams) -> Source:
    if params.source == "mirror":
        return MirrorSource(params.mirror or "")
    if params.source == "archive":
        return ArchiveSource(params)
    return HubSource(params)
