"""Presets: the size knobs (data, model, epochs) that ``preset:`` fills in one word.

``PRESETS`` is the one table of them; the comment at the top of params.yaml shows it,
and a test keeps the two equal. A preset lies under params.yaml: whatever the file (or
``EMBEDFORGE_MIRROR``, or ``--set``) gives wins over the preset's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedforge.config.overrides import deep_merge
from embedforge.config.schema import Params
from embedforge.errors import UserError


def teacher_shaped(teacher_layers: list[int]) -> dict[str, Any]:
    """Model knobs of a student with the teacher's width, heads and intermediate size, one layer per teacher layer."""
    return {
        "hidden_size": 384,
        "num_layers": len(teacher_layers),
        "num_heads": 12,
        "intermediate_size": 1536,
        "teacher_layers": teacher_layers,
    }


PRESETS: dict[str, dict[str, Any]] = {
    # What `make run` trains on a fresh clone: about 2-3 minutes on 2 CPU cores, long enough for real curves.
    "development": {
        "download": {"limit": 4000},
        "model": teacher_shaped([0, 5]),
        "train": {"epochs": 6},
    },
    "research": {
        "download": {"limit": 20_000},
        "model": teacher_shaped([0, 3, 5]),
        "train": {"epochs": 3},
    },
    "production": {
        "download": {"limit": None},
        "model": teacher_shaped([0, 1, 2, 3, 4, 5]),
        "train": {"epochs": 10},
    },
    # A student at 2.8x the teacher's encoding speed, distilled on every training sentence within 30 minutes of CPU.
    "distill-small": {
        "download": {"limit": None},
        "model": teacher_shaped([0, 5]),
        "train": {
            "epochs": 8,
            "max_minutes": 28,
            "objectives": {"infonce": 0.0, "distill": 1.0},
            "datasets": ["snli", "stsb", "sick"],
            "distill_loss": "cosine",
            "lr": 1e-4,
            "batch_size": 128,
        },
    },
}


def apply_preset(explicit: dict[str, Any], source: Path) -> dict[str, Any]:
    """``explicit`` laid over the knobs of the preset it names (or the default one); ``source`` names it in errors."""
    preset = explicit.get("preset", Params.model_fields["preset"].default)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UserError(f"{source}: preset: must be one of {', '.join(PRESETS)}, got {preset!r}")
    return deep_merge(PRESETS[preset], explicit)
