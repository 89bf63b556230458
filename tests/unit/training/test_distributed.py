"""Distributed training's refusals before any work. Runs on several real processes (gloo) are in
tests/pipeline/test_distributed_training.py."""

import pytest

from embedforge.errors import UserError
from embedforge.stages import train


def test_nccl_on_a_cpu_machine_is_refused_before_any_work(ready, project):
    with pytest.raises(UserError, match="train.backend is nccl"):
        train.run(ready("train.backend=nccl", "train.device=cpu", "train.nproc_per_node=2"))
    assert not (project / "checkpoints").exists()
