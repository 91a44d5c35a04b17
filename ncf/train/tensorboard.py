"""Training curves as TensorBoard event files (tensorboardX, the writer Ray Tune's logger uses).

Tune writes one event file per trial by itself; a plain ``jobs.train`` run gets its curves
from here, so that both open the same way::

    tensorboard --logdir artifacts/ray_results
"""

from __future__ import annotations

import numbers
import os
from typing import Dict, Sequence


def write_history(history: Sequence[Dict], logdir: str) -> str:
    """One scalar per numeric metric per epoch (step = epoch) under ``logdir``."""
    from tensorboardX import SummaryWriter

    os.makedirs(logdir, exist_ok=True)
    with SummaryWriter(logdir) as writer:
        for row in history:
            for name, value in row.items():
                if name != "epoch" and isinstance(value, numbers.Real):
                    writer.add_scalar(f"train/{name}", float(value), global_step=int(row["epoch"]))
    return logdir
