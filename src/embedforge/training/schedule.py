"""Learning-rate multipliers: linear warm-up then cosine decay, and the ramp after a resume.

A resumed run restarts with fresh optimizer momentum against weights that have
moved on, so its first epochs ramp the rate up again (20% -> 100% over three
epochs by default) instead of jumping straight back to full speed.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, floor: float = 0.0) -> float:
    """0 -> 1 linearly over ``warmup_steps``, then cosine from 1 down to ``floor`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resume_ramp(epochs_since_resume: float, ramp_epochs: float = 3.0, start: float = 0.2) -> float:
    """``start`` at the first step after a resume, rising linearly to 1 after ``ramp_epochs`` epochs."""
    if ramp_epochs <= 0:
        return 1.0
    return start + (1.0 - start) * min(max(epochs_since_resume, 0.0) / ramp_epochs, 1.0)
