"""Where preprocessing writes its output (the DATA directory every later job reads)."""

from __future__ import annotations

import os

STATS = "stats.json"


def examples_dir(data: str, split: str) -> str:
    """Parquet examples of one split (``train``, ``val`` or ``test``), hive-partitioned by split."""
    return os.path.join(data, "examples", f"split={split}")


def user_state_dir(data: str) -> str:
    """One row per user: purchases (product indices, timestamps) before the test period."""
    return os.path.join(data, "user_state")


def vocab_dir(data: str) -> str:
    return os.path.join(data, "vocab")


def quarantine_dir(data: str) -> str:
    return os.path.join(data, "quarantine")


def stats_path(data: str) -> str:
    return os.path.join(data, STATS)


def baselines_dir(data: str) -> str:
    """What evaluation keeps about the baselines (their tuned parameters)."""
    return os.path.join(data, "baselines")
