"""JSON files that are never seen half-written."""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from typing import Any, Callable, Dict


def write_json(path: str, payload: Dict) -> None:
    """Writes JSON atomically (:func:`write_text`)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` atomically (:func:`write_atomically`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


def write_atomically(path: str, write: Callable[[str], object]) -> None:
    """``write(tmp)`` to a temporary name, flushed to disk, then renamed over ``path``: a write
    that fails or is killed leaves the previous file whole, never a truncated one (a Parquet
    table, a plot: anything a writer takes a path for)."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write (a full disk) leaves nothing
            os.remove(tmp)


def temporary_name(path: str) -> str:
    """Where :func:`write_text` writes ``path`` before the rename (left behind only by a process
    killed in between): a name of its own per write, so that two writers of one path (two
    evaluations tuning the baselines of one DATA) never write into, or remove, each other's."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{uuid.uuid4().hex[:8]}.tmp")


def is_temporary_of(name: str, path: str) -> bool:
    """Whether the file name ``name`` is one :func:`temporary_name` gives ``path`` (or older code's
    ``path.tmp``)."""
    tail = os.path.basename(path)
    return name == f"{tail}.tmp" or re.fullmatch(rf"\.{re.escape(tail)}\.[0-9a-f]{{8}}\.tmp", name) is not None


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# A model's config.json, manifest.json and metrics.json, a DATA's stats.json: kilobytes to a few
# megabytes (a manifest lists every file of the state). Past this the file is not one of them.
SMALL_JSON_LIMIT = 64 << 20


def read_small_json(path: str, limit: int = SMALL_JSON_LIMIT) -> Any:
    """:func:`read_json` for a small file that must be a regular one: raises ValueError for a
    FIFO, a device, a folder or a symbolic link (a FIFO would block the read forever, a device
    read without end) and for a file over ``limit`` bytes, before reading it."""
    return json.loads(read_small(path, limit).decode("utf-8"))


def read_small(path: str, limit: int = SMALL_JSON_LIMIT) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`read_small_json`)."""
    _check_small(os.lstat(path), limit)
    # O_NONBLOCK: a FIFO swapped in after the lstat fails the fstat below instead of blocking the
    # open; O_NOFOLLOW: so does a symbolic link.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(fd)
        _check_small(status, limit)
        # Its size and one byte more (a file grown since is caught below): read(limit + 1) would
        # allocate the whole limit for a file of a kilobyte.
        content = f.read(status.st_size + 1)
        if len(content) > status.st_size:
            content += f.read(limit + 1 - len(content))
    if len(content) > limit:  # grown since the fstat
        raise ValueError(f"more than {limit} bytes, too large for this file")
    return content


def _check_small(status: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"not a regular file (a {_kind(status.st_mode)})")
    if status.st_size > limit:
        raise ValueError(f"{status.st_size} bytes, more than the {limit} this file may have")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"))
    return next((name for test, name in kinds if test(mode)), "device or socket")
