"""The params of the data stages: download, validate, precompute and tokenize."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from embedforge.config.base import Section
from embedforge.config.builtin_datasets import BUILTINS, with_builtin_defaults
from embedforge.config.datasets import (
    RESERVED_NAMES,
    DatasetName,
    DatasetSource,
    SplitName,
    check_documents,
    default_datasets,
)

ONE_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
CUDA_DEVICE = re.compile(r"cuda:\d+")

# Named here because the download section's own message points at it; ``params_file`` reads it.
MIRROR_ENV = "EMBEDFORGE_MIRROR"


class DownloadParams(Section):
    source: Literal["hub", "mirror", "archive"] = "hub"
    mirror: str | None = None
    limit: int | None = Field(default=None, gt=0)
    optional_splits: list[SplitName] = ["test"]
    drop_eval_overlap_from_train: bool = True
    hub_timeout_s: float = Field(default=10.0, gt=0)
    datasets: dict[DatasetName, DatasetSource] = Field(default_factory=default_datasets, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _builtins_filled_in(cls, data: Any) -> Any:
        """snli, stsb and sick need no kind (or score range) in params.yaml, nor a source: they are known."""
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            data = {
                **data,
                "datasets": {
                    name: with_builtin_defaults(name, given) if isinstance(given, dict) else given
                    for name, given in data["datasets"].items()
                },
            }
        return data

    @model_validator(mode="after")
    def _source_has_location(self) -> DownloadParams:
        if self.source == "mirror" and not self.mirror:
            raise ValueError(
                f"download.source is 'mirror' but download.mirror is empty: set download.mirror "
                f"or the {MIRROR_ENV} environment variable"
            )
        if reserved := sorted(set(self.datasets) & RESERVED_NAMES):
            raise ValueError(f"download.datasets.{reserved[0]}: the name is taken by a pipeline folder; pick another")
        foreign = [name for name, ds in self.datasets.items() if ds.archive and name not in BUILTINS]
        if foreign:
            raise ValueError(
                f"download.datasets.{foreign[0]}.archive: archives are read for {', '.join(BUILTINS)} only; "
                f"give your own data as files"
            )
        if self.source == "archive":
            hub_only = [name for name, ds in self.datasets.items() if ds.hub_id and name not in BUILTINS]
            if hub_only:
                raise ValueError(
                    f"download.datasets.{hub_only[0]}: download.source 'archive' reads the official archives of "
                    f"{', '.join(BUILTINS)}; give {hub_only[0]} as files, or use download.source hub or mirror"
                )
            missing = [name for name, ds in self.datasets.items() if ds.hub_id and not ds.archive]
            if missing:
                raise ValueError(
                    "download.source is 'archive' but no archive is set for "
                    + ", ".join(f"download.datasets.{name}.archive" for name in missing)
                )
        return self

    @model_validator(mode="after")
    def _queries_have_documents(self) -> DownloadParams:
        check_documents(self.datasets)
        return self


class ValidateParams(Section):
    min_chars: int = Field(default=1, ge=1)
    max_chars: int = Field(default=1000, gt=0)
    max_duplicate_pair_rate: float = Field(default=0.02, ge=0, le=1)
    max_leaked_pair_rate: float = Field(default=0.0, ge=0, le=1)
    failed_rows_shown: int = Field(default=3, ge=1)
    data_docs: bool = True
    batch_rows: int = Field(default=100_000, ge=1)
    allow_empty_splits: bool = False

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"validate.min_chars ({self.min_chars}) must be <= validate.max_chars ({self.max_chars})")
        return self


class PrecomputeParams(Section):
    teacher: str = Field(default="packaged:all-MiniLM-L6-v2", min_length=1)
    datasets: list[DatasetName] = Field(default=["snli", "stsb", "sick"], min_length=1)
    splits: list[SplitName] = Field(default=["train", "validation"], min_length=1)
    batch_size: int = Field(default=128, gt=0)
    shard_size: int = Field(default=50_000, gt=0)
    dtype: Literal["float16", "float32"] = "float16"
    normalize: bool = True
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    workers: int = Field(default=1, ge=1)
    dask_address: str | None = Field(default=None, min_length=1)

    @property
    def devices(self) -> list[str]:
        """``device`` as a list: one item, or the GPUs of a multi-GPU run, one worker each."""
        return [item.strip() for item in self.device.split(",")]

    @model_validator(mode="after")
    def _devices_fit_workers(self) -> PrecomputeParams:
        devices = self.devices
        if len(devices) == 1:
            if not ONE_DEVICE.fullmatch(devices[0]):
                raise ValueError(
                    f"precompute.device: must be auto, cpu, mps, cuda, cuda:N or a list of GPUs like cuda:0,cuda:1, "
                    f"got {self.device!r}"
                )
            return self
        if not all(CUDA_DEVICE.fullmatch(device) for device in devices) or len(set(devices)) < len(devices):
            raise ValueError(
                f"precompute.device: several devices must be distinct GPUs, each cuda:N (e.g. cuda:0,cuda:1), "
                f"got {self.device!r}"
            )
        if self.workers != len(devices):
            raise ValueError(
                f"precompute.workers ({self.workers}) must equal the number of GPUs in precompute.device "
                f"({len(devices)}: {self.device}): one worker per GPU"
            )
        if self.dask_address is not None:
            raise ValueError(
                "precompute.device: a list of GPUs pins the workers of the LocalCluster precompute starts; with "
                "precompute.dask_address, start each `dask worker` on its own GPU (CUDA_VISIBLE_DEVICES=N) "
                "and set precompute.device: cuda"
            )
        return self


class TokenizeParams(Section):
    tokenizer: str = Field(default="teacher", min_length=1)
    train_vocab: Literal["wordpiece", "bpe"] | None = None
    vocab_size: int = Field(default=30522, ge=100)
    max_length: int = Field(default=128, ge=8)
    chunk_overlap: int = Field(default=0, ge=0)
    datasets: list[DatasetName] = Field(default=["snli", "stsb", "sick"], min_length=1)
    splits: list[SplitName] = Field(default=["train", "validation"], min_length=1)

    @model_validator(mode="after")
    def _overlap_fits(self) -> TokenizeParams:
        if self.chunk_overlap >= self.max_length - 2:
            raise ValueError(
                f"tokenize.chunk_overlap ({self.chunk_overlap}) must be < "
                f"tokenize.max_length - 2 ({self.max_length - 2})"
            )
        return self
