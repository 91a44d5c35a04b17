"""One deploy at a time on a Ray cluster (``jobs.deploy``).

A rollout reads what Serve serves, deploys, asks every replica, and may deploy the settings
served before again. Two at once undid each other: job A rolled out a good model X, job B a bad
model Y the replicas refused (they kept X and named B's error on /healthz); A's health round saw
that error, took its own rollout for failed and restored what both had read before, so X was
lost. A deploy holds the cluster's deploy slot from reading Serve's state until its health check
or restore is done (:func:`ncf.slot.cluster_slot`: freed when the job ends, however it
ends); a second one is refused in one line naming the first (exit 75, try later).

Example::

    with deploy_slot("jobs.deploy --model /models/v7"):
        serving = serving_before(running_address())
        ...
"""

from __future__ import annotations

from ncf.slot import cluster_slot

DEPLOY_SLOT_NAME = "ncf-deploy-slot"


def deploy_slot(holder: str):
    """Holds the cluster's deploy slot for the block (Ray must be up); ``holder`` names this
    deploy in the refusal another one gets."""
    return cluster_slot(
        DEPLOY_SLOT_NAME,
        holder,
        lambda first: (
            f"another deploy rolls out on this cluster ({first}): two at once undo each other's rollouts; "
            "try again when it ends"
        ),
    )
