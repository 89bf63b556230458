"""What every source gives download: a split's batches in the dataset's native columns, and their provenance."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from embedforge.data.readers import RawBatch


class SplitNotFound(Exception):
    """The source has no such split; the caller decides whether that split was optional."""


@dataclass
class LoadedSplit:
    batches: Iterable[RawBatch]
    provenance: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    kind: str

    def load(self, dataset: str, split: str) -> LoadedSplit: ...
