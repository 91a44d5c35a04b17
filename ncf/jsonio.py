"""JSON files that are never seen half-written."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import uuid
from typing import Any, Callable, Dict

import numpy as np

from ncf.errors import naming


def write_json(path: str, payload: Dict) -> None:
    """Writes ``payload`` as strict JSON, atomically (:func:`write_text`). A non-finite float
    (NaN, an infinity) is written as ``null``: Python's bare ``NaN`` is refused by JavaScript's
    ``JSON.parse`` and by strict parsers (jq, Go, a browser reading a model's metrics). A numpy
    scalar is written as the number or boolean it holds; any other type raises TypeError."""
    text = json.dumps(_finite(payload), indent=2, sort_keys=True, allow_nan=False, default=_plain)
    write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (numpy's float64 too: a float subclass) as None.
    ``allow_nan=False`` alone would refuse them, and ``default`` never sees a float."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """``json.dumps``' ``default``: numpy scalars as Python's (a ``str`` here wrote np.int64(5)
    as "5" and np.bool_ as "True", which a reader then compared with 5 or true in vain)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):  # float32, float16: not float subclasses, so not _finite's
        return float(value) if math.isfinite(value) else None
    raise TypeError(f"{type(value).__name__} is not JSON: convert it before writing ({value!r:.60})")


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
        with naming(path):
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        # The rename lives in the folder's entry list: until that is on disk, a power cut can
        # bring back the old file (or none) though this write returned.
        fsync_parent(path)
    finally:
        if os.path.exists(tmp):  # a failed write (a full disk) leaves nothing
            os.remove(tmp)


def fsync_path(path: str) -> None:
    """Flushes one file or directory entry list to disk. File systems that cannot fsync a
    directory (some network ones answer EINVAL) are left as they are."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:  # a folder this account may write but not read (mode 0333): left as it is
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_parent(path: str) -> None:
    """Flushes the entry list of the directory holding ``path`` (a rename or a new entry there)."""
    fsync_path(os.path.dirname(os.path.abspath(path)) or "/")


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
