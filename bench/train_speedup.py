"""End-to-end training speed against an older commit, in one run: each tree's own ``jobs.train``
for one epoch on Complete Journey through Ray Train (one worker), examples/s from each run's
``metrics.json``, and their ratio.

python -m bench.train_speedup --old-tree /work/wt/old [--old-data DATA] [--data artifacts/data/cj]

``--old-tree`` is a checkout of the older commit (``git worktree add --detach DIR COMMIT``); its
DATA is preprocessed by its own ``jobs.preprocess`` when ``--old-data`` is not given (the two
commits write different training examples: point-wise then, lists of candidates now, so each is
trained on its own). An example is one (household, product) pair scored by the loss in both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run(tree: str, args: list, workdir: str) -> None:
    """``python -m`` in ``tree`` with this interpreter (the same environment for both commits),
    recording runs in a registry of the benchmark's own, not the project's."""
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": tree, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    subprocess.run([sys.executable, "-m", *args], cwd=tree, check=True, env=env)


def epoch_rate(tree: str, data: str, workdir: str, output: str, name: str) -> dict:
    started = time.time()
    train = ["jobs.train", "--data", data, "--output", output, "--epochs", "1", "--name", name]
    run(tree, train, workdir)
    with open(os.path.join(output, "metrics.json")) as f:
        epoch = json.load(f)["history"][0]
    return {
        "examples_per_s": round(epoch["examples_per_s"]),
        "epoch_seconds": round(epoch["epoch_seconds"], 1),
        # What the epoch read (candidates, all workers'), so the two sides' work can be compared.
        "examples": round(epoch["examples_per_s"] * epoch["epoch_seconds"]),
        "steps": epoch.get("steps"),
        # All workers' lists, where steps are one worker's; None for a commit before session 67's.
        "lists": epoch.get("lists"),
        "job_seconds": round(time.time() - started),
        "commit": subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True, text=True
        ).stdout.strip(),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-tree", required=True, help="a checkout of the older commit")
    p.add_argument("--old-data", default=None, help="its DATA (default: preprocessed here from Complete Journey)")
    p.add_argument("--data", default="artifacts/data/cj", help="this tree's DATA")
    p.add_argument("--workdir", default="artifacts/train_speedup")
    args = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = os.path.abspath(args.workdir)
    old_data = os.path.abspath(args.old_data or os.path.join(workdir, "old-data"))  # the old tree runs elsewhere
    if not os.path.exists(os.path.join(old_data, "stats.json")):
        run(args.old_tree, ["jobs.preprocess", "--dataset", "completejourney", "--output", old_data], workdir)
    tag = time.strftime("%Y%m%d-%H%M%S")
    old = epoch_rate(args.old_tree, old_data, workdir, os.path.join(workdir, f"old-{tag}"), f"speedup-old-{tag}")
    new = epoch_rate(
        here, os.path.abspath(args.data), workdir, os.path.join(workdir, f"new-{tag}"), f"speedup-new-{tag}"
    )
    result = {
        "benchmark": "train_speedup",
        "old": old,
        "new": new,
        "speedup_examples_per_s": round(new["examples_per_s"] / old["examples_per_s"], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
