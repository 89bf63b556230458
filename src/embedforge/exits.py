"""Leaving a finished command quickly.

An interpreter that has loaded torch, transformers and sentence-transformers spends 2-2.5 s at exit tearing down
their ~5,000 modules, once per stage process: seconds on every `dvc repro`. A finished command has nothing left
that needs the teardown, so it runs what exit would run that matters, in the interpreter's order (threading's
exit hooks and other threads finishing, then atexit handlers, then flushed output) and ends the process there.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def exit_now(code: object = 0) -> None:
    """End the process as ``sys.exit(code)`` would, without the interpreter's teardown."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # as the interpreter's exit: threading's exit hooks (Prefect's services), then joins
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)
