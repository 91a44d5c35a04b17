"""What validating a log batch costs, by timestamp type: time and bytes a row, as JSON.

python -m bench.validation_cost [--rows 65536] [--repeats 7] [--old-tree /work/wt/old]

Each input kind (an Arrow timestamp in microseconds, one in nanoseconds with a time zone, epoch
seconds as int64, ISO-8601 text) is a batch of ``--rows`` rows, 1% of them bad (a user id
missing), validated ``--repeats`` times by ``ncf.data.schema.validate_log_batch``; the figures
are the median time and the validated table's bytes a row (what Ray's object store holds of the
validated log before the source columns). With ``--old-tree`` (a checkout of an older commit:
``git worktree add --detach DIR COMMIT``) the same batches are validated by that tree's code
too, in the same run, each tree in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run with the tree's root first on the path: the code measured is that tree's.
MEASURE = """
import json, statistics, sys, time
import numpy as np, pyarrow as pa
from ncf.data import schema

rows, repeats = int(sys.argv[1]), int(sys.argv[2])
start = 1_700_000_000
seconds = start + np.arange(rows, dtype=np.int64) * 37
users = pa.array([None if i % 100 == 0 else f"u{i % 5000}" for i in range(rows)], pa.string())
products = pa.array([f"p{i % 997}" for i in range(rows)], pa.string())
kinds = {
    "timestamp_us": pa.array(seconds * 1_000_000, pa.timestamp("us")),
    "timestamp_ns_tz": pa.array(seconds * 1_000_000_000, pa.timestamp("ns", "Europe/Paris")),
    "epoch_int64": pa.array(seconds, pa.int64()),
    "iso_text": pa.array(np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s"), pa.string()),
}
out = {}
for kind, stamps in kinds.items():
    batch = pa.table({"user_id": users, "product_id": products, "timestamp": stamps, "quantity": np.ones(rows)})
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        validated = schema.validate_log_batch(batch)
        times.append(time.perf_counter() - began)
    out[kind] = {
        "ms": round(statistics.median(times) * 1e3, 2),
        "bytes_per_row": round(validated.nbytes / rows, 1),
    }
print(json.dumps(out))
"""


def measure(tree: str, rows: int, repeats: int) -> dict:
    """``MEASURE`` run on ``tree``'s code in a process of its own."""
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(rows), str(repeats)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=65_536, help="rows a batch (ingest's BATCH_ROWS)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--old-tree", default=None, help="a checkout of an older commit, measured in the same run")
    args = p.parse_args(argv)
    result = {"rows": args.rows, "repeats": args.repeats}
    if args.old_tree:
        result["old"] = measure(os.path.abspath(args.old_tree), args.rows, args.repeats)
    result["new"] = measure(REPO, args.rows, args.repeats)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
