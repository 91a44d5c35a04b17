"""What the evaluation report reads besides the evaluation's rows, checked before the evaluation's
minutes (a bad input failed the report after them): a model's ``metrics.json`` (its per-epoch
history, the epoch it kept; the file is outside the checksums, so any shape of it is met) and
``bench.ablations`` rows (``--ablations``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

from ncf.errors import InputError


def drawable_history(metrics: dict) -> Optional[list]:
    """``metrics.json``'s per-epoch history where the report can draw it (a list of objects, each
    with an integer ``epoch`` and a numeric ``train_loss``), else None, said in one line: the
    file is outside the checksums, and a history of another shape failed the report after the
    whole evaluation."""
    history = metrics.get("history")
    if history is None:
        return None
    if isinstance(history, list) and all(
        isinstance(h, dict)
        and type(h.get("epoch")) is int
        and "train_loss" in h
        # null: a non-finite loss (a diverged epoch), as write_json writes NaN; drawn as a gap
        and (h["train_loss"] is None or isinstance(h["train_loss"], (int, float)))
        and not isinstance(h["train_loss"], bool)
        for h in history
    ):
        return history
    print(
        "[evaluate] the model's metrics.json has a history the report cannot draw (not a list of epochs "
        "with their training loss): the report shows no curves",
        file=sys.stderr,
        flush=True,
    )
    return None


def kept_epoch(metrics: dict) -> Optional[int]:
    """The epoch whose weights a model directory holds, as its ``metrics.json`` says: ``best_epoch``
    (a training that finished, ``SWEEP/best``), else the epoch of the checkpoint it was exported
    from (a training stopped before it recorded ``best_epoch``); None when neither is there or it
    is no whole number. ``metrics.json`` is outside the checksums: any shape of it is met here,
    before the evaluation (main reads it then), not after it."""
    training = metrics.get("training")
    epoch = metrics.get("best_epoch")
    if epoch is None and isinstance(training, dict):
        epoch = training.get("epoch")
    if isinstance(epoch, float) and epoch.is_integer():  # a sweep table's column, float where a trial has none
        epoch = int(epoch)
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def read_ablation_rows(path: str) -> list:
    """The ablation rows of ``--ablations``: one JSON object per line, each a row the report's
    table can show (:func:`check_ablation_row`), at least one; checked before the evaluation's
    minutes, which a bad row would otherwise cost."""
    if not os.path.isfile(path):
        raise InputError(f"--ablations {path}: no such file")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"--ablations {path}: line {number} is not JSON ({e.msg})") from None
                    check_ablation_row(path, number, row)
                    rows.append(row)
    except UnicodeDecodeError as e:
        raise InputError(f"--ablations {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise InputError(f"--ablations {path}: holds no rows (python -m bench.ablations --data DATA writes them)")
    return rows


def check_ablation_row(path: str, number: int, row) -> None:
    """Refuses (one line) a row the report's table would fail on after the evaluation: not an
    object, no ``model`` name, ``seeds`` (which decides whether a figure's spread is shown)
    that is not an integer of at least 1, or a ``features_version`` (compared with this code's,
    which the report warns about) that is neither absent, null nor an integer."""
    where = f"--ablations {path}: line {number}"
    if not isinstance(row, dict):
        raise InputError(f"{where} is a JSON {type(row).__name__}, not an object")
    if not isinstance(row.get("model"), str):
        raise InputError(f'{where} has no model name ("model": {json.dumps(row.get("model"))})')
    seeds = row.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"{where}: seeds is {json.dumps(seeds)}, not an integer of at least 1")
    version = row.get("features_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InputError(f"{where}: features_version is {json.dumps(version)}, not an integer")
