"""The atomic writes every stage's outputs go through: a replaced directory is never missing, not even for a
moment, and what a killed writer left beside an output is removed by the next write of that output."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

from embedforge.files import atomic_dir, atomic_path

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from embedforge.files import atomic_dir, atomic_path
with atomic_dir(Path(sys.argv[1])) as tree, atomic_path(Path(sys.argv[2])) as file:
    (tree / "half").write_text("half")
    file.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_directory_being_replaced_is_never_missing_to_a_reader(tmp_path: Path):
    destination = tmp_path / "last"
    destination.mkdir()
    (destination / "weights").write_bytes(b"0" * 4096)
    missing: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if not (destination / "weights").is_file():
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(300):
            with atomic_dir(destination) as tree:
                for part in range(20):  # a tree with some files, as a checkpoint has
                    (tree / f"part-{part}").write_bytes(b"x" * 512)
                (tree / "weights").write_bytes(str(generation).encode())
    finally:
        done.set()
        reader.join()
    assert missing == [], f"the destination was missing {len(missing)} times"
    assert (destination / "weights").read_text() == "299"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last"]


def test_the_next_write_removes_what_a_killed_writer_left_and_spares_a_living_ones(tmp_path: Path):
    tree, file = tmp_path / "tree", tmp_path / "file.json"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tree), str(file)], check=False)
    assert killed.returncode == -9
    left = sorted(path.name for path in tmp_path.iterdir())
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left), left
    living = tmp_path / f".tree.{socket.gethostname()}-1.abcd.tmp"  # pid 1 never ends
    other_host = tmp_path / ".tree.another-host-4242.abcd.tmp"  # on a shared disk: not ours to judge
    living.mkdir()
    other_host.mkdir()

    with atomic_dir(tree) as new:
        (new / "whole").write_text("whole")
    with atomic_path(file) as new_file:
        new_file.write_text("whole")

    remaining = sorted(path.name for path in tmp_path.iterdir())
    assert remaining == sorted(["file.json", "tree", living.name, other_host.name]), remaining
