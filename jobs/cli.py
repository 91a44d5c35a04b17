"""Shared command-line plumbing for jobs: Ray start-up (with the log settings of
:mod:`jobs.logs`) and one-line errors."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from jobs import logs
from ncf.errors import InputError


def init_ray(num_cpus: int | None = None) -> None:
    """Joins the cluster a job was submitted to (RAY_ADDRESS), else starts a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = not os.environ.get("RAY_ADDRESS")
    runtime_env = logs.configure(local=local, num_cpus=num_cpus)  # before Ray starts: its processes inherit it
    if not local:
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        # address="local": never attach to whatever cluster a previous `ray start` left a
        # pointer to in /tmp/ray; without RAY_ADDRESS a job runs on its own local cluster.
        # The dashboard (on 127.0.0.1) serves the State API, which Ray Train's placement-group
        # cleaner needs when Tune stops a trial: without it the trial's CPUs are never freed.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
        )


@contextmanager
def one_line_errors():
    """Bad input ends the job with a one-line message and exit code 2, not a traceback."""
    try:
        yield
    except InputError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
