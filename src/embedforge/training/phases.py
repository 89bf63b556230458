"""The training schedule as phases: one for ``train.schedule: single``, three for ``staged``.

Staged training (foundation -> consolidation -> mastery) trains on growing shares
of the data. Every dataset's examples are shuffled once by the seed and each phase
takes a prefix, so a later phase's data contains the earlier phase's. A balanced
phase takes the same number from every dataset (at most what the smallest has).
Each phase after the first starts from the previous phase's best weights with a
fresh optimizer, so instead of a second warm-up it ramps the learning rate as a
resumed run does (``train.resume_warmup``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedforge.config import PhaseParams, TrainParams
from embedforge.training.examples import Examples

STAGED_PHASES = ("foundation", "consolidation", "mastery")


@dataclass
class Phase:
    name: str | None  # None: the whole of a single-schedule run
    examples: Examples
    params: TrainParams
    checkpoints: Path
    continues: bool  # starts from the previous phase's best weights, with the resume ramp

    @property
    def label(self) -> str:
        return self.name or "train"


def shuffled(by_dataset: dict[str, Examples], seed: int) -> dict[str, Examples]:
    return {
        name: examples.take(np.random.default_rng([seed, index]).permutation(len(examples)))
        for index, (name, examples) in enumerate(sorted(by_dataset.items()))
    }


def phase_examples(by_dataset: dict[str, Examples], phase: PhaseParams) -> Examples:
    """A prefix of every (shuffled) dataset: ``data_fraction`` of it, or equal shares when ``balanced``."""
    if phase.balanced:
        total = phase.data_fraction * sum(len(examples) for examples in by_dataset.values())
        share = min(round(total / len(by_dataset)), *(len(examples) for examples in by_dataset.values()))
        counts = dict.fromkeys(by_dataset, share)
    else:
        counts = {name: round(phase.data_fraction * len(examples)) for name, examples in by_dataset.items()}
    return Examples.joined(
        [examples.take(slice(max(counts[name], 1))) for name, examples in by_dataset.items()]
    ).in_order()


def training_phases(params: TrainParams, by_dataset: dict[str, Examples], seed: int, root: Path) -> list[Phase]:
    """What to train, in order: the whole data once, or the three staged phases."""
    if params.schedule == "single":
        everything = Examples.joined(list(by_dataset.values())).in_order()
        return [Phase(None, everything, params, root, continues=False)]
    mixed = shuffled(by_dataset, seed)
    phases = []
    for index, name in enumerate(STAGED_PHASES):
        phase = getattr(params.staged, name)
        update = {"epochs": phase.epochs, **({"warmup_ratio": 0.0} if index else {})}
        phases.append(
            Phase(name, phase_examples(mixed, phase), params.model_copy(update=update), root / name, index > 0)
        )
    return phases
