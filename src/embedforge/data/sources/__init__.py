"""Where raw splits come from: the Hugging Face hub, a local mirror, the official archives, or a user's files.

One module per backend; each returns a split in the dataset's native columns with a provenance record, and
``normalise`` maps it onto its kind's common schema. What is known about the built-ins (hub ids, archive
layouts, native column names) is in ``config.builtin_datasets``.
"""

from embedforge.config import DownloadParams
from embedforge.data.sources.archives import ArchiveSource
from embedforge.data.sources.base import LoadedSplit, Source, SplitNotFound
from embedforge.data.sources.files import FileSource
from embedforge.data.sources.hub import HubSource, cannot_load
from embedforge.data.sources.mirror import MirrorSource
from embedforge.data.sources.normalise import map_labels, normalise, pick_columns, required_columns

__all__ = [
    "ArchiveSource",
    "FileSource",
    "HubSource",
    "LoadedSplit",
    "MirrorSource",
    "Source",
    "SplitNotFound",
    "cannot_load",
    "make_sources",
    "map_labels",
    "normalise",
    "pick_columns",
    "required_columns",
]


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
