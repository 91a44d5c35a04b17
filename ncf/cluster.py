"""Which Ray cluster a process runs on: one it joins (``RAY_ADDRESS``, whose nodes outlive the
job and whose autoscaler may add more) or its own local one, started and stopped with it.

Example::

    joins_a_cluster()  # False without RAY_ADDRESS, or with RAY_ADDRESS=local
"""

from __future__ import annotations

import os


def joins_a_cluster() -> bool:
    """Whether RAY_ADDRESS names a running cluster to join: ``local`` (Ray's word for a new
    local cluster, stopped with the job) is none, as no RAY_ADDRESS is."""
    return os.environ.get("RAY_ADDRESS", "") not in ("", "local")
