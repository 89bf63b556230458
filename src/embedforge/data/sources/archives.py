"""The built-ins' official archives, read as ``config.builtin_datasets`` lays each one out."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

from embedforge.config import DownloadParams
from embedforge.config.builtin_datasets import BUILTINS, ArchiveLayout
from embedforge.data.readers import RawBatch
from embedforge.data.sources.base import LoadedSplit, SplitNotFound
from embedforge.errors import DataError, UserError
from embedforge.files import sha256_file


class ArchiveSource:
    """The official archives: snli_1.0.zip (jsonl), Stsbenchmark.tar.gz (tab-separated), SICK.zip / SICK.txt."""

    kind = "archive"

    def __init__(self, params: DownloadParams):
        self.paths = {name: Path(ds.archive).expanduser() for name, ds in params.datasets.items() if ds.archive}

    def load(self, dataset: str, split: str) -> LoadedSplit:
        path = self.paths[dataset]
        if not path.is_file():
            raise UserError(f"download.datasets.{dataset}.archive: file {path} does not exist")
        try:
            frame = read_split(path, BUILTINS[dataset].archive, split)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: corrupt or truncated archive ({exc}); download it again") from None
        provenance = {"source_file": str(path.resolve()), "source_sha256": sha256_file(path)}
        return LoadedSplit([RawBatch(frame, str(path))], provenance)


def read_split(path: Path, layout: ArchiveLayout, split: str) -> pd.DataFrame:
    """One split of an archive as a frame of its native columns."""
    archive_split = layout.split_name(split)
    member, lines = member_lines(path, layout.member.format(split=archive_split))
    if layout.format == "jsonl":
        return jsonl_rows(member, lines, layout.fields)
    if layout.format == "tsv":
        return tsv_rows(member, lines, layout.fields)
    return table_rows(member, lines, layout, archive_split)


def member_lines(path: Path, member_suffix: str) -> tuple[str, list[str]]:
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
    return member, decode_lines(raw, member)


def decode_lines(raw: bytes, member: str) -> list[str]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{member} line {line}: bytes {raw[exc.start : exc.end]!r} are not valid UTF-8; re-save the file as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").split("\n")


def jsonl_rows(member: str, lines: list[str], fields: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{member} line {number}: not valid JSON ({exc.msg})") from None
        rows.append({key: record.get(key) for key in fields})
    return pd.DataFrame(rows, columns=list(fields))


def tsv_rows(member: str, lines: list[str], fields: tuple[str, ...]) -> pd.DataFrame:
    """Tab-separated ``fields`` without a header; any fields past them are dropped."""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) < len(fields):
            raise DataError(
                f"{member} line {number}: expected at least {len(fields)} tab-separated fields, got {len(values)}"
            )
        rows.append(dict(zip(fields, values, strict=False)))
    return pd.DataFrame(rows, columns=list(fields))


def table_rows(member: str, lines: list[str], layout: ArchiveLayout, archive_split: str) -> pd.DataFrame:
    """The rows of one split of a tab-separated table that holds every split."""
    split_column = layout.split_column
    frame = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", dtype=str, keep_default_na=False)
    if split_column not in frame.columns:
        raise DataError(f"{member}: missing column {split_column!r}; found {', '.join(frame.columns)}")
    selected = frame[frame[split_column] == archive_split]
    if selected.empty:
        raise SplitNotFound(f"{member}:{archive_split}")
    return selected.reset_index(drop=True)
