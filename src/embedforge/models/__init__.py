"""Model families: the teacher, and the students trained by the train stage.

A family is how to build a new student (``build``) and how many bytes one training
step of it needs (``estimate_memory``), so the train stage can size its micro-batches
before it starts. A family plugs in by adding itself to ``MODEL_FAMILIES`` under its
``model.kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embedforge.models.encoder import build_encoder, estimate_memory_bytes


@dataclass(frozen=True)
class ModelFamily:
    build: Callable[..., Any]
    estimate_memory: Callable[..., dict[str, int]]


MODEL_FAMILIES = {"encoder": ModelFamily(build=build_encoder, estimate_memory=estimate_memory_bytes)}
