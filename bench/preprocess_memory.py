"""The preprocessing driver's peak memory on a given log, and how it grows with the log, as JSON.

python -m bench.preprocess_memory --input LOGS_DIR --products CATALOG [--files 5 20]
    [--old-tree /work/wt/old] [--full]

Each run is ``jobs.preprocess`` in a fresh process (its own local Ray cluster), state only
unless ``--full``, on the first N Parquet files of ``--input`` for each N of ``--files``; the
figures are that process's own peak resident memory (``ru_maxrss`` of the driver, not of Ray's
workers) and the peak of its anonymous memory (what it allocated itself). With
``--old-tree`` (a checkout of an older commit: ``git worktree add --detach DIR COMMIT``) each
size runs on both trees, the older first, so that the two are measured on the same machine in
the same run. ``bench.scale`` writes a 1M-household log to
``artifacts/scale/u1000000-p100000-l20/raw``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

# The driver's peak resident memory, and the peak of its anonymous part sampled every 50 ms:
# the resident total also counts the pages of the memory-mapped state it writes (the kernel's
# to evict) and of Ray's object store it reads batches from (shared, the store's).
DRIVER = """
import json, resource, sys, threading, time
peak_anon = [0]
def sample():
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
from jobs import preprocess
stats = preprocess.main(sys.argv[1:])
print("BENCH " + json.dumps({
    "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "driver_peak_anon_mib": round(peak_anon[0] / 1024),
    "seconds": round(time.perf_counter() - started, 1),
    "rows_in": stats["rows_in"],
}))
"""


def run(tree: str, logs: list, products: str, output: str, full: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    argv = ["--products", products, "--output", output, *([] if full else ["--state-only"])]
    with tempfile.TemporaryDirectory() as links:
        # One --input: a directory of links to the first N files.
        for path in logs:
            os.symlink(os.path.abspath(path), os.path.join(links, os.path.basename(path)))
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, "--input", links, *argv],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise SystemExit(f"preprocessing in {tree} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH "))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True, text=True)
    return {"commit": commit.stdout.strip(), **json.loads(line[len("BENCH ") :])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True, help="a directory of Parquet purchase logs")
    p.add_argument("--products", required=True, help="the product catalog")
    p.add_argument("--files", type=int, nargs="+", default=[5, 20], help="log files per run (the first N)")
    p.add_argument("--old-tree", help="a checkout of an older commit, measured first")
    p.add_argument("--full", action="store_true", help="build the training lists too")
    p.add_argument("--workdir", default="artifacts/bench-preprocess-memory")
    args = p.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.input, "*.parquet")))
    if not files:
        raise SystemExit(f"no Parquet files in {args.input}")
    trees = ([os.path.abspath(args.old_tree)] if args.old_tree else []) + [os.getcwd()]
    runs = []
    for count in args.files:
        for tree in trees:
            output = os.path.abspath(os.path.join(args.workdir, f"{os.path.basename(tree)}-{count}"))
            figures = run(tree, files[:count], os.path.abspath(args.products), output, args.full)
            runs.append({"tree": tree, "files": min(count, len(files)), **figures})
            print(json.dumps(runs[-1]), file=sys.stderr)
    result = {"benchmark": "preprocess_memory", "cpus": os.cpu_count(), "state_only": not args.full, "runs": runs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
