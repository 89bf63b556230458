"""One pipeline run at a time in a project: ``embedforge run`` and the Prefect flow hold an exclusive lock on
``.embedforge.lock`` for their whole run, and a second one refuses at once, naming the first, instead of
interleaving its outputs with it. The OS releases the lock when its process ends, killed or not, so a crash
never leaves a stale lock. Single-stage commands do not take it."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedforge.errors import UserError

LOCK_FILE = Path(".embedforge.lock")


class PipelineBusy(UserError):
    """Another pipeline run holds this project."""


@contextmanager
def pipeline_lock(holder: str) -> Iterator[None]:
    """Hold the project's pipeline lock as ``holder`` (what the message to a second run names)."""
    with LOCK_FILE.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            running = handle.read().strip() or "another process"
            raise PipelineBusy(
                f"{LOCK_FILE.resolve()}: {running} is running the pipeline in this project; "
                "wait for it to finish (or stop it), then run again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
