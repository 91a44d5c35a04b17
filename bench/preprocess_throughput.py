"""Preprocessing rows/s on synthetic logs of two sizes (how the cost grows), as JSON.

python -m bench.preprocess_throughput [--users 2000 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray

from jobs.cli import init_ray
from ncf.data import datasets, schema
from ncf.data.preprocess import PreprocessConfig, preprocess


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, nargs="+", default=[2_000, 8_000])
    p.add_argument("--products", type=int, default=20_000)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    init_ray(num_cpus=2)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for users in args.users:
            spec = datasets.SyntheticSpec(num_users=users, num_products=args.products)
            logs, catalog = datasets.write_synthetic(os.path.join(tmp, f"raw{users}"), spec)
            started = time.perf_counter()
            stats = preprocess(
                schema.resolve_files(logs),
                schema.resolve_files(catalog),
                os.path.join(tmp, f"data{users}"),
                PreprocessConfig(),
            )
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "users": users,
                    "rows_in": stats["rows_in"],
                    "seconds": round(seconds, 1),
                    "rows_per_s": round(stats["rows_in"] / seconds),
                }
            )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    result = {"benchmark": "preprocess_throughput", "cpus": cpus, "machine_cores": os.cpu_count(), "runs": runs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
