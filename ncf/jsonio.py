"""JSON files that are never seen half-written."""

from __future__ import annotations

import json
import os
from typing import Any, Dict


def write_json(path: str, payload: Dict) -> None:
    """Writes JSON atomically: to a temporary name, flushed to disk, then renamed over ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
