"""Atomic file and directory writes, and content hashes.

A stage's outputs appear whole or not at all: everything is written under a
temporary name beside its destination and renamed into place on success, so a
killed or failed stage never leaves a half file that a later stage could read.
A temporary's name carries its writer's host and pid (``.NAME.HOST-PID.XXXX.tmp``),
so the next write of the same output removes what a killed writer left.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from embedforge.errors import DataError, UserError

READ_BUFFER_BYTES = 1 << 20  # a column chunk is read this much at a time, page by page
BATCH_BYTES = 32 << 20  # a parquet batch's data at most, uncompressed: long documents are fewer rows a batch
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # a full disk, a quota, a read-only mount
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # Linux's renameat2(2)


class WriteFailed(UserError):
    """An output could not be written for want of room (or a writable disk); what was there is kept."""


@contextmanager
def no_room_named(destination: Path) -> Iterator[None]:
    """A full disk as a message naming the output, not a traceback (pyarrow's errors may carry no errno)."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_ROOM and "No space left on device" not in str(error):
            raise
        reason = error.strerror or str(error).strip().splitlines()[-1]
        raise WriteFailed(
            f"{destination}: cannot be written ({reason}); what was there is kept: free space and run the stage again"
        ) from None


def stream_parquet(path: Path) -> pq.ParquetFile:
    """A parquet file to read a batch at a time. Arrow's pre-buffering would keep every row group it read
    cached until the file is closed: about 400 MB over a 6-million-row split, growing with the file. Without a
    read buffer, Arrow reads a whole column chunk at once: a file written as one row group of long documents
    would be held whole, whatever the batch."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)


def parquet_batches(
    parquet: pq.ParquetFile, max_rows: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """``parquet``'s records (``columns`` only, if given) in batches of at most ``max_rows`` rows and about
    ``BATCH_BYTES``, reckoned from the row groups' sizes: a batch of documents holds as much data as a batch of
    sentences, not as many rows, so a reader's memory goes with the bytes it holds, whatever a row's length."""
    yield from parquet.iter_batches(batch_size=rows_per_batch(parquet.metadata, max_rows, columns), columns=columns)


def rows_per_batch(metadata: pq.FileMetaData, max_rows: int, columns: list[str] | None = None) -> int:
    """``max_rows``, or fewer where the file's mean row (of ``columns``) is so long that they would pass
    ``BATCH_BYTES``."""
    data = sum(
        group.column(index).total_uncompressed_size
        for group in (metadata.row_group(number) for number in range(metadata.num_row_groups))
        for index in range(group.num_columns)
        if columns is None or group.column(index).path_in_schema.split(".")[0] in columns
    )
    return rows_within(max_rows, metadata.num_rows, data)


def rows_within(max_rows: int, rows: int, size: int) -> int:
    """``max_rows``, or as many rows of a mean ``size / rows`` bytes as fit ``BATCH_BYTES`` (at least one)."""
    if not rows or not size:
        return max_rows
    return max(1, min(max_rows, BATCH_BYTES * rows // size))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _temporary_prefix(destination: Path) -> str:
    return f".{destination.name}.{socket.gethostname()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(destination: Path) -> None:
    """Remove the temporaries of ``destination`` that a writer on this host, now dead, left behind (a kill
    allows no clean-up); another host's, on a shared disk, are left alone, as are a living writer's."""
    stale = re.compile(rf"\.{re.escape(destination.name)}\.{re.escape(socket.gethostname())}-(\d+)\..*\.tmp")
    with os.scandir(destination.parent) as entries:
        for entry in entries:
            match = stale.fullmatch(entry.name)
            if match and not _alive(int(match.group(1))):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    Path(entry.path).unlink(missing_ok=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux's renameat2 RENAME_EXCHANGE); False where the OS or the file
    system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary file path that becomes ``destination`` only if the block succeeds."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(destination), suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with no_room_named(destination):
            yield tmp
            tmp.chmod(0o666 & ~_umask())
            os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(destination: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``destination`` only if the block succeeds.

    An existing ``destination`` is swapped with the new tree in one step, so a reader (or a kill) never finds
    it missing; where the OS cannot swap, the old tree is renamed aside first, a window of two renames.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(destination), suffix=".tmp", dir=destination.parent))
    try:
        with no_room_named(destination):
            yield tmp
        tmp.chmod(0o777 & ~_umask())
        if not destination.exists():
            os.replace(tmp, destination)
        elif not _exchange(tmp, destination):  # after a swap, tmp holds the old tree, removed below
            aside = tmp.with_name(f"{tmp.name}.old.tmp")
            os.replace(destination, aside)
            os.replace(tmp, destination)
            shutil.rmtree(aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path, command: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: missing; run `{command}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `{command}` again") from None


def lacks(tree: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return True
        tree = tree[part]
    return False


def read_object(path: Path, command: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object holding every dotted key in ``keys``, else a DataError naming what is not there."""
    payload = read_json(path, command)
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not a JSON object; run `{command}` again")
    absent = [key for key in keys if lacks(payload, key)]
    if absent:
        raise DataError(f"{path}: no {', '.join(absent)}; run `{command}` again")
    return payload


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


HASH_CACHE_NAME = "file-hashes.sqlite"


def hash_cache_path() -> Path:
    """Where ``known_sha256`` remembers file hashes: the user's cache directory, shared by every project."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "embedforge" / HASH_CACHE_NAME


def known_sha256(path: Path) -> str:
    """sha256 of a file, read again only when its size, mtime or inode changed (DVC's rule for its own cache).

    What a stage's fingerprint costs then stays small on gigabytes of unchanged outputs.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    cache = hash_cache_path()
    cache.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(cache, timeout=30)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INT, mtime INT, inode INT, sha TEXT)"
        )
        row = db.execute("SELECT size, mtime, inode, sha FROM hashes WHERE path = ?", key[:1]).fetchone()
        if row is not None and tuple(row[:3]) == key[1:]:
            return row[3]
        digest = sha256_file(path)
        db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (*key, digest))
        return digest


def content_key(path: Path) -> str:
    """sha256 over the relative names and ``known_sha256`` of the files under ``path`` (or of one file)."""
    digest = hashlib.sha256()
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and outside_bytecode_caches(p)) if path.is_dir() else [path]
    )
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{known_sha256(file)}".encode())
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
