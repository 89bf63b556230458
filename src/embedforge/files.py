"""Atomic file and directory writes, and content hashes.

A stage's outputs appear whole or not at all: everything is written under a
temporary name beside its destination and renamed into place on success, so a
killed or failed stage never leaves a half file that a later stage could read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary file path that becomes ``destination`` only if the block succeeds."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``destination`` only if the block succeeds."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def outside_bytecode_caches(file: Path) -> bool:
    """Importing code writes __pycache__, which must not change the code's hash."""
    return "__pycache__" not in file.parts


def sha256_tree(path: Path, include: Callable[[Path], bool] = outside_bytecode_caches) -> str:
    """sha256 over the relative names and bytes of the files under ``path`` that ``include`` keeps, in sorted order
    (or over a file's name and bytes), so the same content hashes the same wherever it lies.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and include(p)) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
