"""Training curves as TensorBoard event files (tensorboardX, the writer Ray Tune's logger uses).

Tune writes one event file per trial by itself; a plain ``jobs.train`` run gets its curves
from here, so that both open the same way::

    tensorboard --logdir artifacts/ray_results
"""

from __future__ import annotations

import numbers
import os
import shutil
import uuid
from typing import Dict, Sequence

from ncf.model.files import without_diverged_score


def write_history(history: Sequence[Dict], logdir: str) -> str:
    """One scalar per numeric metric per epoch (step = epoch) under ``logdir``, in place of what
    an earlier export wrote there: TensorBoard reads every event file of a folder as one run's,
    so a second file (a run exported again) drew each epoch twice."""
    from tensorboardX import SummaryWriter

    parent = os.path.dirname(os.path.abspath(logdir))
    os.makedirs(parent, exist_ok=True)
    fresh = _new_folder(parent, ".tensorboard-")
    try:
        with SummaryWriter(fresh) as writer:
            for row in history:
                for name, value in without_diverged_score(row).items():
                    if name != "epoch" and isinstance(value, numbers.Real):
                        writer.add_scalar(f"train/{name}", float(value), global_step=int(row["epoch"]))
        _swap_in(fresh, logdir)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return logdir


def _swap_in(fresh: str, logdir: str) -> None:
    """Renames ``fresh`` to ``logdir``, the old one moved aside first and then removed: a reader
    finds the old curves, the new ones or, between the two renames, none; never both."""
    old = None
    if os.path.exists(logdir):
        old = _new_folder(os.path.dirname(fresh), ".tensorboard-old-")
        os.replace(logdir, os.path.join(old, "tensorboard"))
    try:
        os.replace(fresh, logdir)
    except OSError:
        if old is not None:  # the old curves back where they were, not left in a hidden folder
            os.replace(os.path.join(old, "tensorboard"), logdir)
            os.rmdir(old)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _new_folder(parent: str, prefix: str) -> str:
    """A new folder under ``parent`` with the umask's mode, as ``os.makedirs`` made the logdir:
    ``tempfile.mkdtemp``'s 0700, renamed in, hid the curves from a teammate's TensorBoard."""
    path = os.path.join(parent, f"{prefix}{uuid.uuid4().hex}")
    os.mkdir(path)
    return path
