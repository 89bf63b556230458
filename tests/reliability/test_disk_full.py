"""A disk that fills up while a checkpoint or a shard is written: the error names the output, the stage exits
as a user error, and what was there before stays whole (the write goes to a temporary name first).

The full disk is injected (an ENOSPC from the writer), so the test runs on any machine, root or not.
"""

from __future__ import annotations

import errno
import json
import re

import pyarrow.parquet as pq
import pytest

from embedforge.files import WriteFailed
from embedforge.stages import precompute, train
from embedforge.training import checkpoint


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_loadable(ready, project):
    train.run(ready("train.epochs=1"))
    last = project / "checkpoints/last"
    saved = checkpoint.read_state(last)

    with pytest.MonkeyPatch.context() as full, pytest.raises(WriteFailed) as refused:
        full.setattr(checkpoint, "save_file", no_space)
        train.run(ready("train.epochs=2", "train.resume=true"))
    assert str(refused.value).startswith("checkpoints/last: cannot be written (No space left on device)")

    assert checkpoint.read_state(last) == saved
    assert not [path for path in (project / "checkpoints").rglob("*") if path.name.endswith(".tmp")]
    results = train.run(ready("train.epochs=2", "train.resume=true"))
    assert results["result.epochs"] == 2


def test_a_full_disk_during_a_shard_names_it_and_leaves_no_half_shard(
    prepared, mirror_params, tiny_teacher, monkeypatch
):
    cfg = mirror_params(f"precompute.teacher={tiny_teacher}", "precompute.shard_size=80", "precompute.batch_size=16")
    with pytest.MonkeyPatch.context() as full, pytest.raises(WriteFailed) as refused:
        full.setattr(pq, "write_table", no_space)
        precompute.run(cfg)
    assert re.match(r"data/embeddings/.+/part-\d+\.parquet: cannot be written \(No space left", str(refused.value))

    cache = next((prepared / "data/embeddings").iterdir())
    assert not list(cache.glob("part-*.parquet")) and not list(cache.rglob("*.tmp"))
    assert not (cache / "manifest.json").exists() or not json.loads((cache / "manifest.json").read_text()).get("shards")
    assert precompute.run(cfg)["precompute.sentences"] > 0
