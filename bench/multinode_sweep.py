"""Whether a sweep that fills several nodes finishes: a ``ray.cluster_utils.Cluster`` of
``--nodes`` nodes of ``--cpus-per-node`` CPUs, the tests' log (``datasets.SMALL``), and ``jobs.tune_sweep``
with ``--concurrent`` trials at once against it, stopped after ``--limit-s`` seconds. One JSON
line: the sweep's exit code (null when it was stopped), its seconds, and, if it was stopped, the
tasks still waiting for a node then (a training lists' read that no node has room for is what
hung such sweeps). The log, the data, the sweep and its tracking store (the sweep registers
its winner there, not in the project's registry) stay in the temporary directory it names.

python -m bench.multinode_sweep [--nodes 2] [--cpus-per-node 2] [--concurrent 2] [--limit-s 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = ["--epochs", "1", "--max-steps-per-epoch", "3", "--val-users", "20", "--batch-size", "256"]


def small_data(root: str) -> str:
    from ncf.data import datasets, schema
    from ncf.data.preprocess import preprocess, small_config

    logs, catalog = datasets.write_synthetic(os.path.join(root, "raw"), datasets.SMALL)
    data = os.path.join(root, "data")
    preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data, small_config())
    return data


def waiting_tasks() -> list:
    """Names of the tasks waiting for a node, or what kept the state API from listing them."""
    from ray.util.state import list_tasks

    try:
        waiting = list_tasks(filters=[("state", "=", "PENDING_NODE_ASSIGNMENT")], limit=100)
    except Exception as e:  # the figure that matters is whether the sweep finished
        return [f"not listed: {type(e).__name__}: {e}"]
    return sorted({task.name for task in waiting})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--limit-s", type=float, default=300.0)
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="multinode-sweep-")
    # The state API lists the waiting tasks through the dashboard; 8265 may be taken.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node, "dashboard_port": free_port()}
    )
    try:
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        data = small_data(root)
        trials = ["--trials", str(args.concurrent), "--concurrent", str(args.concurrent)]
        command = [sys.executable, "-m", "jobs.tune_sweep", "--data", data, "--output", os.path.join(root, "sweep")]
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.address,
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            # Its own tracking store: a sweep registers its winner, which is no model to deploy.
            "MLFLOW_TRACKING_URI": f"sqlite:///{os.path.join(root, 'mlflow.db')}",
        }
        started = time.perf_counter()
        with open(os.path.join(root, "sweep.log"), "w") as log:
            sweep = subprocess.Popen(command + trials + SWEEP, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                returncode, waiting = sweep.wait(timeout=args.limit_s), []
            except subprocess.TimeoutExpired:
                returncode, waiting = None, waiting_tasks()  # listed before the sweep is stopped
            finally:  # also on Ctrl-C: the sweep must not outlive its cluster
                if sweep.poll() is None:
                    sweep.kill()
                    sweep.wait()
        print(
            json.dumps(
                {
                    "benchmark": "multinode_sweep",
                    "nodes": args.nodes,
                    "cpus_per_node": args.cpus_per_node,
                    "concurrent": args.concurrent,
                    "returncode": returncode,
                    "finished": returncode == 0,
                    "seconds": round(time.perf_counter() - started, 1),
                    "limit_s": args.limit_s,
                    "waiting_for_a_node": waiting,
                    "log": log.name,
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
