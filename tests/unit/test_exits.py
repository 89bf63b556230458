"""A finished command leaves without the interpreter's teardown, but still as sys.exit would."""

import subprocess
import sys

LEAVE = """
import atexit, threading, time
from embedforge.exits import exit_now
atexit.register(print, "atexit ran")
threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished"))).start()
print("output", end=" ")
exit_now({code})
"""


def leave(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LEAVE.format(code=code)], capture_output=True, text=True, timeout=60)


def test_exit_now_keeps_the_status_output_threads_and_atexit_handlers():
    done = leave("3")
    assert done.returncode == 3
    assert done.stdout == "output thread finished\natexit ran\n"


def test_exit_now_treats_none_and_messages_as_sys_exit_does():
    assert leave("None").returncode == 0
    done = leave("'error: the message'")
    assert done.returncode == 1 and done.stderr.strip() == "error: the message"


HOOKED = """
import threading
from embedforge.exits import exit_now
stop = threading.Event()
threading.Thread(target=stop.wait).start()  # a service thread that stops on threading's exit hook, as Prefect's do
threading._register_atexit(stop.set)
exit_now(0)
"""


def test_exit_now_runs_threadings_exit_hooks_before_waiting_for_threads():
    done = subprocess.run([sys.executable, "-c", HOOKED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_embedforge_command_leaves_through_exit_now():
    from importlib.metadata import entry_points

    from embedforge.cli import entry

    [script] = [point for point in entry_points(group="console_scripts") if point.name == "embedforge"]
    assert script.load() is entry
