"""Two pipeline runs in one project: the second refuses at once, naming the first, and touches nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT, pipeline_running_elsewhere

EMBEDFORGE = Path(sys.executable).with_name("embedforge")


def test_a_second_embedforge_run_refuses_while_the_first_holds_the_project(project):
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    params_before = (project / "params.yaml").read_bytes()
    with pipeline_running_elsewhere(project) as holder:
        second = subprocess.run(
            [str(EMBEDFORGE), "run", "--set", "train.lr=1e-3"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"{project / '.embedforge.lock'}: `embedforge run` (pid {holder.pid}, since " in second.stderr
    assert "wait for it to finish (or stop it), then run again" in second.stderr
    assert (project / "params.yaml").read_bytes() == params_before, "the --set was written during the other run"
    assert not (project / "data").exists()


def test_the_lock_is_free_again_once_its_holder_is_killed(project):
    from embedforge.runlock import pipeline_lock

    with pipeline_running_elsewhere(project):
        pass  # killed (SIGKILL) on leaving the block: no chance to unlock
    with pipeline_lock("this test"):
        assert "this test (pid" in (project / ".embedforge.lock").read_text()
