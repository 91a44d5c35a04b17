"""Where preprocessing writes its output (the DATA directory every later job reads)::

    DATA/
      stats.json        counts, split boundaries, cutoffs, the settings of the run
      vocab/            users, products (with department/category), departments, categories
      user_state/       every household's purchases through the data's end (compact arrays)
      product_stats/    popularity, cadence and co-purchase neighbours of every product at the
                        data's end
      examples/         training lists, one folder per cutoff (``cutoff=<epoch seconds>``)
      quarantine/       rows that failed validation, with a reason
      baselines/        the baselines' parameters tuned on the validation weeks (written by evaluation)

``vocab/``, ``user_state/`` and ``product_stats/`` are the *state*: what ranking reads. A model
directory keeps a copy of the state it was trained with (``MODEL/state/``).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from ncf.errors import InputError, cannot_access, one_line
from ncf.jsonio import read_small_json

STATS = "stats.json"


def examples_root(data: str) -> str:
    return os.path.join(data, "examples")


def examples_dir(data: str, cutoff: int) -> str:
    """The training lists of one cutoff."""
    return os.path.join(data, "examples", f"cutoff={int(cutoff)}")


def existing_examples_dirs(data: str, cutoffs: Sequence[int]) -> Dict[int, str]:
    """The training-list folder of each of ``cutoffs`` that has one, in their order: no folder is
    written where no household had a list (an early cutoff of a short log), and a DATA of before
    2026-12-05 still records such cutoffs."""
    found = {int(c): examples_dir(data, c) for c in cutoffs}
    return {c: d for c, d in found.items() if os.path.isdir(d)}


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


def baselines_dir(data: str) -> str:
    """What evaluation keeps about the baselines (their tuned parameters)."""
    return os.path.join(data, "baselines")


VOCAB_SIZES = ("num_users", "num_products", "num_departments", "num_categories")
BOUNDARIES = ("start", "val_start", "test_start", "end")


def _read_stats(data: str, path: str) -> dict:
    """``stats.json`` as an object of the fields every reader takes as they are (a FIFO or a
    truncated, hand-edited or foreign file was a hang or a traceback wherever DATA is read:
    ``jobs.verify --data``, ``jobs.deploy``, the registry); one line, InputError, otherwise."""
    try:
        raw = read_small_json(os.path.realpath(path))  # the link's target: a DATA's files may be links
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        int(raw.get("features_version", 1))
        for field, names in (("boundaries", BOUNDARIES), ("vocab_sizes", VOCAB_SIZES)):
            if field not in raw:
                continue
            if not isinstance(raw[field], dict):
                raise ValueError(f"its {field} is a JSON {type(raw[field]).__name__}, not an object")
            [int(raw[field][n]) for n in names if n in raw[field]]
    except OSError as e:
        raise InputError(f"{path}: {cannot_access('read it', e)}") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{data}: its {STATS} is damaged ({one_line(e)}); preprocess it again") from None
    return raw


class DataStats:
    """``stats.json`` of a DATA directory, read once, with named accessors (no raw key paths
    elsewhere).

    Raises:
        InputError: when ``data`` is not the output of ``jobs.preprocess``.
    """

    def __init__(self, data: str) -> None:
        path = stats_path(data)
        if not os.path.exists(path):
            raise InputError(
                f"{data}: not a preprocessed DATA directory (no {STATS}); run python -m jobs.preprocess first"
            )
        self.path = path
        self.raw = _read_stats(data, path)

    @property
    def boundaries(self) -> dict:
        """``start``, ``val_start``, ``test_start``, ``end`` (epoch seconds; ``end`` is the last purchase)."""
        return self.raw["boundaries"]

    @property
    def end(self) -> int:
        return int(self.boundaries["end"])

    def cutoffs(self, run: str) -> list:
        """The cutoffs preprocessing built training lists for, for ``run`` (validated or refit);
        for a state-only DATA, which has no lists (:meth:`has_lists`), those it would have used."""
        return [int(c) for c in self.raw["cutoffs"][run]]

    def has_lists(self, run: str) -> bool:
        """Whether preprocessing built training lists for ``run``. A state-only DATA has none,
        though its ``stats.json`` records both runs' cutoffs."""
        return not self.raw.get("state_only") and bool(self.raw.get("cutoffs", {}).get(run))

    @property
    def features_version(self) -> int:
        """The :data:`ncf.data.features.FEATURES_VERSION` the training lists were computed with
        (1: preprocessed before it was recorded)."""
        return int(self.raw.get("features_version", 1))

    def differences(self, config: Dict, logs_dir: str, features_version: int) -> Optional[str]:
        """Why this DATA is not what preprocessing ``logs_dir``'s files with ``config`` (a
        :class:`ncf.data.preprocess.PreprocessConfig` as a JSON-ready dict) under this code's
        ``features_version`` would write, with training lists; None when it is."""
        if self.features_version != features_version:
            recorded_version = self.features_version
            return f"preprocessed with feature definitions v{recorded_version}, this code's are v{features_version}"
        recorded = self.raw.get("config")
        if not isinstance(recorded, dict):
            return f"{self.path} records no preprocessing settings"
        changed = changed_settings(recorded, config)
        if changed:
            return "preprocessed with other settings (" + ", ".join(changed) + ")"
        inputs = self.raw.get("inputs")
        logs = [str(path) for path in (inputs.get("logs") or [])] if isinstance(inputs, dict) else []
        # Resolved: the same folder reached through a link is the same dataset.
        if {os.path.realpath(os.path.dirname(path)) for path in logs} != {os.path.realpath(logs_dir)}:
            return f"preprocessed from {', '.join(logs) or 'unrecorded inputs'}, not {logs_dir}"
        if self.raw.get("state_only"):
            return "preprocessed with --state-only: it holds no training lists"
        return None

    @property
    def vocab_sizes(self) -> Optional[dict]:
        """``num_users``, ``num_products``, ``num_departments``, ``num_categories``, as
        :meth:`ncf.data.vocab.Vocabularies.sizes` gives them (None where stats.json lacks them)."""
        return self.raw.get("vocab_sizes")

    @property
    def examples(self) -> dict:
        """The :class:`ncf.data.examples.ExampleConfig` the lists were built with, as a dict."""
        return self.raw["config"]["examples"]

    @property
    def horizon_seconds(self) -> int:
        return int(self.examples["horizon_days"]) * 86_400


def changed_settings(recorded: Dict, expected: Dict, prefix: str = "") -> list:
    """``name: recorded -> expected`` of each setting that differs, nested ones as ``examples.seed``."""
    changed = []
    for name in sorted(set(recorded) | set(expected)):
        was, now = recorded.get(name), expected.get(name)
        if isinstance(was, dict) and isinstance(now, dict):
            changed += changed_settings(was, now, f"{prefix}{name}.")
        elif was != now:
            changed.append(f"{prefix}{name}: {was} -> {now}")
    return changed
