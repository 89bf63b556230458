"""The Hugging Face hub, through ``datasets``: each split read at the commit its revision points at now."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedforge.config import DatasetSource, DownloadParams
from embedforge.config.builtin_datasets import BUILTINS, alternatives
from embedforge.data.readers import BATCH_ROWS, RawBatch
from embedforge.data.sources.base import LoadedSplit, SplitNotFound
from embedforge.errors import DataError, UserError
from embedforge.files import rows_within


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
    others = (
        alternatives(dataset)
        if dataset in BUILTINS
        else f"local files (download.datasets.{dataset}.files instead of hub_id)"
    )
    revision = f" at revision {spec.hub_revision!r}" if spec.hub_revision else ""
    return UserError(
        f"download.datasets.{dataset}.hub_id: cannot load {spec.hub_id!r}{revision} "
        f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}). "
        f"Alternatives: a local mirror (EMBEDFORGE_MIRROR=PATH holding {dataset}/<split>.parquet), or {others}"
    )


def _decoded_batches(split_data: Any, origin: str) -> Iterator[RawBatch]:
    """The split in frames whose ClassLabel columns hold names; -1, the hub's 'no label', becomes '-'."""
    import datasets

    class_labels = {
        name: feature.names for name, feature in split_data.features.items() if isinstance(feature, datasets.ClassLabel)
    }
    first = 0
    # the arrow table's bytes, memory-mapped: long documents, fewer rows a batch
    batch_rows = rows_within(BATCH_ROWS, split_data.num_rows, split_data.data.nbytes)
    for frame in split_data.to_pandas(batch_size=batch_rows, batched=True):
        for name, names in class_labels.items():
            frame[name] = frame[name].map(lambda index, names=names: names[index] if index >= 0 else "-")
        yield RawBatch(frame, origin, first)
        first += len(frame)
