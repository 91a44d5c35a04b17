"""JSON files that are never seen half-written."""

from __future__ import annotations

import json
import os
import re
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
