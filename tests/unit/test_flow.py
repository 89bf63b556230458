"""The Prefect flow's rules that need no flow run: schedules, and which failures are retried."""

import subprocess
import sys
from pathlib import Path

import pytest
from prefect.states import Failed

from embedforge.errors import UserError
from embedforge.flow import is_transient

BIN = Path(sys.executable).parent


def test_schedule_needs_exactly_one_of_cron_and_interval(project):
    done = subprocess.run(
        [str(BIN / "embedforge"), "schedule"], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2 and "give exactly one of --cron or --interval" in done.stderr


@pytest.mark.parametrize(
    ("error", "retried"),
    [(OSError("connection reset"), True), (UserError("validate.max_chars: bad"), False)],
)
def test_only_transient_failures_are_retried(error, retried):
    assert is_transient(None, None, Failed(data=error)) is retried


def test_the_ephemeral_server_gets_time_to_start_on_a_busy_machine():
    """Prefect's 20 s failed a fresh process's first flow run on a loaded 2-core CI machine."""
    from prefect.settings import Settings

    assert Settings().server.ephemeral.startup_timeout_seconds == 120
