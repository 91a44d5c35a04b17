"""Where preprocessing writes its output (the DATA directory every later job reads)::

    DATA/
      stats.json        counts, split boundaries, cutoffs, the settings of the run
      vocab/            users, products (with department/category), departments, categories
      user_state/       every household's purchases through the data's end (compact arrays)
      product_stats/    popularity and cadence of every product at the data's end
      examples/         training lists, one folder per cutoff (``cutoff=<epoch seconds>``)
      quarantine/       rows that failed validation, with a reason

``vocab/``, ``user_state/`` and ``product_stats/`` are the *state*: what ranking reads. A model
directory keeps a copy of the state it was trained with (``MODEL/state/``).
"""

from __future__ import annotations

import os

STATS = "stats.json"


def examples_root(data: str) -> str:
    return os.path.join(data, "examples")


def examples_dir(data: str, cutoff: int) -> str:
    """The training lists of one cutoff."""
    return os.path.join(data, "examples", f"cutoff={int(cutoff)}")


def user_state_dir(data: str) -> str:
    return os.path.join(data, "user_state")


def product_stats_dir(data: str) -> str:
    return os.path.join(data, "product_stats")


def vocab_dir(data: str) -> str:
    return os.path.join(data, "vocab")


def quarantine_dir(data: str) -> str:
    return os.path.join(data, "quarantine")


def stats_path(data: str) -> str:
    return os.path.join(data, STATS)
