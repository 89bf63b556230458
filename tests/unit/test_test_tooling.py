"""What the test suite's own speed rests on: pytest-xdist keeps an ``xdist_group`` on one worker.

The team tests (tests/servers/test_team.py) share session fixtures that start PostgreSQL, S3 and MLflow servers and
run a pipeline; a group split over both workers builds all of that twice. pytest 9.2 keeps node ids where
pytest-xdist 3.8 cannot suffix them with the group, and the split went unnoticed through CI runs.
"""

import os
import subprocess
import sys

GROUPED = """
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("together")


def test_one(worker_id):
    (Path(os.environ["WORKER_IDS"]) / "one").write_text(worker_id)


def test_two(worker_id):
    (Path(os.environ["WORKER_IDS"]) / "two").write_text(worker_id)
"""


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this directory is the rootdir: none of our conftest
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "-p", "xdist.plugin"],  # xdist alone, no other installed plugin: a quick start
        cwd=tmp_path,
        env={**os.environ, "WORKER_IDS": str(tmp_path), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {(tmp_path / name).read_text() for name in ("one", "two")}
    assert len(workers) == 1, f"the group ran on {sorted(workers)}"
