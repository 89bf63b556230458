"""A local mirror: a directory laid out as ``<dataset>/<split>.parquet`` in the datasets' native columns."""

from __future__ import annotations

from pathlib import Path

from embedforge.config import DownloadParams
from embedforge.data.readers import read_batches
from embedforge.data.sources.base import LoadedSplit, SplitNotFound
from embedforge.errors import UserError
from embedforge.files import sha256_file


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
