"""A resume from a checkpoint that cannot be read back: the error names the file and the ways on, and nothing
is deleted or quietly started over; a pickle that would run code is refused unrun."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from embedforge.stages import train
from embedforge.training.checkpoint import OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, DamagedCheckpoint


class RunsCode:
    """Unpickling this would create ``marker``: what a crafted checkpoint handed to a user could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trained(ready, project: Path) -> Path:
    train.run(ready("train.epochs=1"))
    assert (project / "checkpoints/last").is_dir() and (project / "checkpoints/best").is_dir()
    return project / "checkpoints"


def test_a_truncated_last_checkpoint_names_the_file_and_the_ways_on(ready, trained):
    before = sorted(str(item.relative_to(trained)) for item in trained.rglob("*"))
    for damaged in (WEIGHTS_FILE, STATE_FILE, OPTIMIZER_FILE):
        path = trained / "last" / damaged
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(DamagedCheckpoint) as refused:
            train.run(ready("train.epochs=2", "train.resume=true"))
        message = str(refused.value)
        assert message.startswith(f"checkpoints/last/{damaged}: cannot be read back as a checkpoint ("), message
        assert "train.resume_from: best" in message and "train.resume: false" in message
        assert sorted(str(item.relative_to(trained)) for item in trained.rglob("*")) == before, "something was removed"
        path.write_bytes(whole)
    (trained / "last" / WEIGHTS_FILE).write_bytes(b"")

    results = train.run(ready("train.epochs=2", "train.resume=true", "train.resume_from=best"))
    assert results["result.epochs"] == 2 and results["result.steps"] > 0


def test_a_crafted_pickle_in_the_optimizer_state_is_refused_unrun(ready, trained, tmp_path):
    marker = tmp_path / "ran"
    (trained / "last" / OPTIMIZER_FILE).write_bytes(pickle.dumps(RunsCode(marker)))

    with pytest.raises(DamagedCheckpoint, match=rf"checkpoints/last/{OPTIMIZER_FILE}: cannot be read back"):
        train.run(ready("train.epochs=2", "train.resume=true"))
    assert not marker.exists(), "the pickle's code ran"
