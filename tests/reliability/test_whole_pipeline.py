"""The whole pipeline as a user runs it (``embedforge run``, so ``dvc repro``) in a clone: two runs started at the
same moment, and a run killed mid-training with its whole process tree, then resumed through ``dvc repro``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import QUICK_TRAINING, clone_env, copy_state, sh
from safetensors.torch import load_file

from embedforge.config import write_overrides

EMBEDFORGE = str(Path(sys.executable).with_name("embedforge"))

RESUMABLE_TRAINING = [
    *QUICK_TRAINING,
    "train.resume_warmup.enabled=false",
    "tracking.enabled=false",
]


def start_run(repo: Path, env: dict, *overrides: str) -> subprocess.Popen:
    """``embedforge run`` in its own process group, so a kill takes dvc and the stage it runs with it."""
    return subprocess.Popen(
        [EMBEDFORGE, "run", *(f"--set={item}" for item in overrides)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def gone(run: subprocess.Popen) -> None:
    """Wait until every process of the killed run's group has been reaped: until then DVC counts the killed
    `dvc repro` as alive and refuses to take over its stage locks."""
    run.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {run.pid} still has processes 60 s after SIGKILL")


def final_weights(repo: Path) -> dict[str, torch.Tensor]:
    return load_file(str(repo / "checkpoints/last/weights.safetensors"))


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory, finished_pipeline: Path, small_mirror: Path):
    """A copy of the finished tiny pipeline, its training made resumable and quick, in which two `embedforge run`
    were started at once; their (returncode, stdout, stderr)."""
    repo = copy_state(finished_pipeline, tmp_path_factory.mktemp("race") / "repo")
    env = clone_env(repo, small_mirror)
    write_overrides(repo / "params.yaml", RESUMABLE_TRAINING)
    runs = [start_run(repo, env), start_run(repo, env)]
    streams = [run.communicate(timeout=600) for run in runs]
    return repo, env, [(run.returncode, out, err) for run, (out, err) in zip(runs, streams, strict=True)]


def test_two_runs_started_at_once_one_runs_the_pipeline_the_other_refuses_and_touches_nothing(raced):
    repo, env, outcomes = raced
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, _, err in outcomes if code == 2)
    assert "is running the pipeline in this project" in refused and "Traceback" not in refused
    status = sh("dvc", "status", "--json", cwd=repo, env=env).stdout
    assert json.loads(status) == {}, f"the finished run's outputs do not match dvc.lock: {status}"


def test_a_run_killed_mid_training_resumes_through_dvc_repro_to_the_uninterrupted_weights(raced):
    repo, env, _ = raced
    uninterrupted = final_weights(repo)
    sh("rm", "-rf", "checkpoints", "models/student", cwd=repo, env=env)

    run = start_run(repo, env)
    state = repo / "checkpoints/last/state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 4):
        assert run.poll() is None, f"the run ended before the kill: {run.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint at step 4 within 300 s"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # dvc, the train stage and any loader worker at once, as the OOM killer would
    gone(run)
    killed_at = json.loads(state.read_text())["step"]

    resumed = start_run(repo, env, "train.resume=true")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert f"at step {killed_at} (epoch" in out + err, "the run started over instead of resuming"
    after = final_weights(repo)
    assert after.keys() == uninterrupted.keys()
    assert all(torch.equal(after[name], uninterrupted[name]) for name in after), "the resumed weights differ"
