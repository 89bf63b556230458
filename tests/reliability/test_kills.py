"""``kill -9`` at seeded moments of a stage, in a real subprocess (tests/reliability/die.py): nothing half-written
is ever taken for whole, and the re-run ends as if the kill had not happened."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers import QUICK_TRAINING, TINY_STUDENT
from safetensors.torch import load_file

from embedforge import embeddings
from embedforge.data.gate import require_passed
from embedforge.errors import UserError
from embedforge.stages import precompute

DIE = Path(__file__).with_name("die.py")
EMBEDFORGE = Path(sys.executable).with_name("embedforge")
KILL_SEED = 18


def sets(overrides: list[str]) -> list[str]:
    return [f"--set={item}" for item in overrides]


def killed(moment: str, overrides: list[str], cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DIE), moment, *sets(overrides)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == -9, f"{moment} was not killed ({done.returncode}):\n{done.stderr[-3000:]}"


def final_weights(project: Path) -> dict[str, torch.Tensor]:
    return load_file(str(project / "checkpoints/last/weights.safetensors"))


@pytest.fixture
def training(ready, project, tiny_teacher) -> list[str]:
    """The overrides of a two-epoch run whose resume retraces it exactly (CPU, one seed, no resume ramp)."""
    return [
        "tracking.enabled=false",
        f"precompute.teacher={tiny_teacher}",
        *TINY_STUDENT,
        *QUICK_TRAINING,
        "train.resume_warmup.enabled=false",
        "train.grad_accum_steps=2",  # two micro-batches a step, so a kill can land between them
    ]


def seeded_moments(seed: int) -> list[str]:
    """Where to kill the training run below (24 steps, 32 checkpoint files, 3 validations), drawn from ``seed``:
    after the first checkpoint, so that there is one to resume from."""
    draw = random.Random(seed)
    return [
        f"train:mid-step@{draw.randint(2, 21)}",
        f"train:checkpoint-write@{draw.randint(3, 30)}",
        f"train:validation@{draw.randint(2, 3)}",
    ]


def train_in_fresh_process(overrides: list[str], project: Path) -> subprocess.CompletedProcess:
    """`embedforge train` as its own process: the uninterrupted run and each resume start from the same state (this
    worker's torch may have been set to other thread counts by earlier tests, which changes float sums)."""
    return subprocess.run(
        [str(EMBEDFORGE), "train", *sets(overrides)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_train_killed_mid_step_in_a_checkpoint_write_or_in_validation_resumes_to_the_same_weights(training, project):
    uninterrupted_run = train_in_fresh_process(training, project)
    assert uninterrupted_run.returncode == 0, uninterrupted_run.stderr[-3000:]
    uninterrupted = final_weights(project)
    for moment in seeded_moments(KILL_SEED):
        for output in ("checkpoints", "models"):
            subprocess.run(["rm", "-rf", str(project / output)], check=True)
        killed(moment, training, project)
        assert (project / "checkpoints/last/state.json").is_file(), moment
        resumed = train_in_fresh_process([*training, "train.resume=true"], project)
        assert resumed.returncode == 0, f"{moment}: {resumed.stderr[-3000:]}"
        after = final_weights(project)
        assert after.keys() == uninterrupted.keys()
        assert all(torch.equal(after[name], uninterrupted[name]) for name in after), f"{moment}: weights differ"
        assert not list((project / "checkpoints").rglob(".*.tmp")), f"{moment}: the killed write's temporary is left"


def verified_manifest(cache: Path) -> dict:
    manifest = json.loads((cache / "manifest.json").read_text())
    for shard in manifest["shards"]:
        assert hashlib.sha256((cache / shard["file"]).read_bytes()).hexdigest() == shard["sha256"], shard["file"]
    return manifest


@pytest.mark.parametrize("moment", ["precompute:mid-shard", "precompute:manifest"])
def test_precompute_killed_mid_shard_or_in_its_manifest_reruns_to_one_row_per_sentence(
    moment, prepared, mirror_params, tiny_teacher
):
    overrides = [f"precompute.teacher={tiny_teacher}", "precompute.shard_size=80", "precompute.batch_size=16"]
    cfg = mirror_params(*overrides)
    mirror = ["download.source=mirror", f"download.mirror={cfg.download.mirror}", "tracking.enabled=false"]
    killed(moment, [*mirror, *overrides], prepared)
    cache = next((prepared / "data/embeddings").iterdir())
    assert not (cache / "manifest.json").exists()
    with pytest.raises(UserError, match="no finished embedding cache"):
        embeddings.load(cache)  # a reader never opens what the killed run left

    results = precompute.run(cfg)
    manifest = verified_manifest(cache)
    ids = pq.read_table(sorted(cache.glob("part-*.parquet"))).column("sentence_id").to_pylist()
    assert len(ids) == len(set(ids)) == manifest["unique_sentences"] == results["precompute.unique_sentences"]


@pytest.mark.parametrize("moment", ["download:writing", "validate:checking"])
def test_download_or_validate_killed_leaves_nothing_that_reads_as_complete(moment, project, small_mirror):
    overrides = ["download.source=mirror", f"download.mirror={small_mirror}", "download.limit=40"]
    overrides.append("tracking.enabled=false")
    if moment.startswith("validate"):
        done = subprocess.run(
            [str(EMBEDFORGE), "download", *sets(overrides)], cwd=project, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr
    killed(moment, overrides, project)

    if moment.startswith("download"):
        assert not (project / "data/raw").exists()
        assert [
            path for path in project.rglob("*.parquet") if not any(part.endswith(".tmp") for part in path.parts)
        ] == []
    else:
        assert not (project / "data/validation/results.json").exists()
        with pytest.raises(UserError, match="run `embedforge validate` first"):
            require_passed()
