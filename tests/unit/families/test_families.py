"""The seed families' rules that need no training run: a lattice too big for memory is refused, a balanced
phase draws evenly. Their training runs: tests/pipeline/test_family_training.py."""

import numpy as np
import pytest
from helpers import LATTICE

from embedforge.config import PhaseParams
from embedforge.errors import UserError
from embedforge.stages import train
from embedforge.training.examples import Examples
from embedforge.training.phases import phase_examples


def test_a_lattice_that_cannot_fit_in_memory_is_refused_before_training(project, ready):
    big = [*LATTICE, "model.lattice.size=[30, 20, 20]", "model.lattice.channels=64", "train.memory_limit_mb=200"]
    with pytest.raises(UserError, match=r"one example needs about \d+ MB to train \(lattice model\) but 200 MB"):
        train.run(ready(*big))
    assert not (project / "checkpoints").exists()


def test_a_balanced_phase_takes_as_many_examples_from_every_dataset():
    snli, stsb = np.arange(100), np.arange(100, 130)  # rows of the two datasets' anchors
    by_dataset = {"snli": Examples(snli, snli + 1000, snli * 0 - 1), "stsb": Examples(stsb, stsb + 1000, stsb * 0 - 1)}
    balanced = phase_examples(by_dataset, PhaseParams(data_fraction=0.5, epochs=1, balanced=True))
    plain = phase_examples(by_dataset, PhaseParams(data_fraction=0.5, epochs=1))
    assert (balanced.anchors < 100).sum() == (balanced.anchors >= 100).sum() == 30
    assert (plain.anchors < 100).sum() == 50 and (plain.anchors >= 100).sum() == 15
    assert (np.diff(plain.anchors) > 0).all()  # in order, each once
