"""A user's own files: ``download.datasets.<name>.files`` globs, read in batches of any size."""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Iterator
from pathlib import Path

from embedforge.config import DatasetSource
from embedforge.data.readers import RawBatch, file_format, read_batches
from embedforge.data.sources.base import LoadedSplit, SplitNotFound
from embedforge.errors import DataError, UserError
from embedforge.files import sha256_file
from embedforge.paths import EXTERNAL_DIR

log = logging.getLogger(__name__)


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
