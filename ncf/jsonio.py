"""JSON files that are never seen half-written."""

from __future__ import annotations

import json
import os
from typing import Any, Dict


def write_json(path: str, payload: Dict) -> None:
    """Writes JSON atomically: to a temporary name, flushed to disk, then renamed over ``path``."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write (a full disk, a value JSON cannot hold) leaves nothing
            os.remove(tmp)


def temporary_name(path: str) -> str:
    """Where :func:`write_json` writes ``path`` before the rename (left behind only by a process
    killed in between)."""
    return path + ".tmp"


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
