"""What a second node adds: preprocessing rows/s and batch-scoring users/s on one node (1 CPU)
and on two (1 + 1 CPUs), same synthetic logs, as JSON.

Both layouts are ``ray.cluster_utils.Cluster``s on this machine, started fresh for each run,
with the same object store per node; the logs both read are written before either starts, on a
cluster of their own, so that neither layout's workers are warm when its timing starts. Scoring
uses a seeded, untrained model (the two-stage ranking costs the same whatever the weights) and
one actor per CPU. The preprocessing outputs of the two layouts are compared (stats without
timings), so a faster run is also a right one.

On a machine whose cores are all shared by both "nodes" the second node adds a worker process,
not hardware: the ratio measures how much of the work Ray spreads, bounded by the cores there
are (see BENCHMARKS.md). Each run records the machine's load average: other processes on
the same cores make both ratios meaningless.

python -m bench.multinode_throughput [--users 4000] [--products 20000] [--k 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional, Tuple

GIB = 2**30
OBJECT_STORE_PER_NODE = 2 * GIB


def start_cluster(nodes: int):
    """A head and ``nodes - 1`` worker nodes of 1 CPU each, the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE_PER_NODE, "include_dashboard": False},
    )
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_PER_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    return cluster


def stop_cluster(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


def timed_preprocess(logs, catalog, output: str):
    """(stats, seconds) of the default preprocessing."""
    from ncf.data.preprocess import PreprocessConfig, preprocess

    started = time.perf_counter()
    stats = preprocess(logs, catalog, output, PreprocessConfig())
    return stats, time.perf_counter() - started


def timed_scoring(model: str, data: str, output: str, k: int) -> Dict:
    """The batch-scoring summary: one actor per CPU of the cluster (a pool even where ``auto``
    would score this small a dataset in the driver: the point is what the second node adds)."""
    from ncf.batch.scoring import BatchScoreConfig, run_batch_scoring

    config = BatchScoreConfig(
        model=model, data=data, output=output, k=k, at="data-end", cpus_per_actor=1.0, score_in="actors"
    )
    return run_batch_scoring(config, log=lambda message: None)


def write_logs(spec, tmp: str) -> Tuple[str, str]:
    """The synthetic logs every layout reads, written by Ray Data on a cluster of their own, stopped
    before either layout starts: written inside the 1-node layout's cluster (as before 2026-12-05),
    they left its workers started and warm for its timed preprocessing, where the 2-node layout
    found them already written and started cold."""
    from ncf.data import datasets

    cluster = start_cluster(1)
    try:
        return datasets.write_synthetic(os.path.join(tmp, "raw"), spec)
    finally:
        stop_cluster(cluster)


def run_layout(nodes: int, logs: str, catalog: str, tmp: str, k: int, model: Optional[str]) -> Dict:
    """Preprocesses and scores on a fresh cluster of ``nodes`` nodes; the first layout also
    writes the model that every layout then reads."""
    from ncf.data import schema
    from ncf.model.directory import save_untrained_model_dir

    load_before = os.getloadavg()[0]
    cluster = start_cluster(nodes)
    try:
        data = os.path.join(tmp, f"data_{nodes}")
        stats, preprocess_s = timed_preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data)
        model = model or save_untrained_model_dir(os.path.join(tmp, "model"), data, version="bench")
        scoring = timed_scoring(model, data, os.path.join(tmp, f"scores_{nodes}"), k)
    finally:
        stop_cluster(cluster)
    return {
        "nodes": nodes,
        "cpus": nodes,
        "rows_in": stats["rows_in"],
        "preprocess_s": round(preprocess_s, 1),
        "preprocess_rows_per_s": round(stats["rows_in"] / preprocess_s),
        "users_scored": scoring["users"],
        "scoring_s": scoring["seconds"],
        "scoring_users_per_s": scoring["users_per_s"],
        # Other work on the machine skews these figures: the 1-minute load average around the run.
        "load_avg_1m_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "_stats": {key: v for key, v in stats.items() if key not in ("seconds", "inputs")},
        "_model": model,
    }


def main(argv: Optional[List[str]] = None) -> Dict:
    from ncf.data import datasets

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=4_000)
    p.add_argument("--products", type=int, default=20_000)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    spec = datasets.SyntheticSpec(num_users=args.users, num_products=args.products)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        logs, catalog = write_logs(spec, tmp)
        for nodes in (1, 2):
            runs.append(run_layout(nodes, logs, catalog, tmp, args.k, runs[0]["_model"] if runs else None))
    one, two = runs
    result = {
        "benchmark": "multinode_throughput",
        "machine_cores": os.cpu_count(),
        "users": args.users,
        "products": args.products,
        "k": args.k,
        "object_store_gib_per_node": OBJECT_STORE_PER_NODE / GIB,
        "same_preprocess_output": one["_stats"] == two["_stats"],
        "runs": [{key: v for key, v in run.items() if not key.startswith("_")} for run in runs],
        "second_node_speedup": {
            "preprocess": round(two["preprocess_rows_per_s"] / one["preprocess_rows_per_s"], 2),
            "scoring": round(two["scoring_users_per_s"] / one["scoring_users_per_s"], 2),
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
