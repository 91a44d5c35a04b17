"""One training job or sweep at a time on a Ray cluster.

Each training job sizes its workers from the cluster's CPUs less the ones it keeps for Ray
Data's reads of its training lists; a second job at once takes those CPUs, and both wait on
their reads. So ``jobs.train`` and ``jobs.tune_sweep`` hold the cluster's training slot while
they run (:func:`ncf.slot.cluster_slot`: freed when the job ends, however it ends); a second
one is refused in one line naming the first (exit status 75, try later).

Example::

    with training_slot("jobs.train train-20261204-101500"):
        fit(config)
"""

from __future__ import annotations

from ncf.slot import cluster_slot

SLOT_NAME = "ncf-training-slot"


def training_slot(holder: str):
    """Holds the cluster's training slot for the block (Ray must be up); ``holder`` names this
    job in the refusal another job gets."""
    return cluster_slot(
        SLOT_NAME,
        holder,
        lambda first: (
            f"another training job runs on this cluster ({first}): run one training job or sweep at a "
            "time on a cluster (two take each other's CPUs kept for Ray Data's reads); try again when it ends"
        ),
    )
