"""The seed families' rules that need no training run: a lattice too big for memory is refused, a balanced
phase draws evenly. Their training runs: tests/pipeline/test_family_training.py."""

import pytest
from helpers import LATTICE

from embedforge.config import PhaseParams
from embedforge.errors import UserError
from embedforge.stages import train
from embedforge.training.examples import Example
from embedforge.training.phases import phase_examples


def test_a_lattice_that_cannot_fit_in_memory_is_refused_before_training(project, ready):
    big = [*LATTICE, "model.lattice.size=[30, 20, 20]", "model.lattice.channels=64", "train.memory_limit_mb=200"]
    with pytest.raises(UserError, match=r"one example needs about \d+ MB to train \(lattice model\) but 200 MB"):
        train.run(ready(*big))
    assert not (project / "checkpoints").exists()


def test_a_balanced_phase_takes_as_many_examples_from_every_dataset():
    by_dataset = {
        "snli": [Example(f"s{i}", f"t{i}", None) for i in range(100)],
        "stsb": [Example(f"b{i}", f"c{i}", None) for i in range(30)],
    }
    balanced = phase_examples(by_dataset, PhaseParams(data_fraction=0.5, epochs=1, balanced=True))
    plain = phase_examples(by_dataset, PhaseParams(data_fraction=0.5, epochs=1))
    assert sum(e.anchor.startswith("s") for e in balanced) == sum(e.anchor.startswith("b") for e in balanced) == 30
    assert sum(e.anchor.startswith("s") for e in plain) == 50 and sum(e.anchor.startswith("b") for e in plain) == 15
