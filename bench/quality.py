"""Quality on the held-out weeks: AdvancedNCF over several seeds beside the baselines, all by the
same evaluation code (full ranking, the test weeks; baselines tuned on the validation weeks).

python -m bench.quality --data artifacts/data/cj [--seeds 3] [--epochs 3] [--workdir artifacts/quality] [--reuse]

Prints one JSON line per model (AdvancedNCF as mean +- sd over the seeds, then each baseline)
and writes them to ``WORKDIR/results.jsonl``; the figures of BENCHMARKS.md come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.runs import summarize, validated_run, write_jsonl
from ncf.evaluate.evaluation import evaluate_all
from ncf.splits import TEST


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--workdir", default="artifacts/quality", help="where the runs' model directories go")
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the model")
    p.add_argument("--epochs", type=int, default=3, help="epochs at most (early stopping on validation)")
    p.add_argument("--reuse", action="store_true", help="read runs already trained in WORKDIR")
    args = p.parse_args(argv)
    runs = [
        validated_run(args.data, os.path.join(args.workdir, f"seed{seed}"), seed, args.epochs, {}, args.reuse)
        for seed in range(args.seeds)
    ]
    for run in runs:
        print(json.dumps({"benchmark": "quality", "run": "advanced_ncf", **run}), flush=True)
    rows = [summarize("advanced_ncf", runs)]
    rows += evaluate_all(None, args.data, TEST)  # the same households as the model's rows
    for row in rows:
        print(json.dumps({"benchmark": "quality", **row}), flush=True)
    write_jsonl(os.path.join(args.workdir, "results.jsonl"), rows)
    failed = [row["model"] for row in rows if "failed" in row]
    if failed:  # printed and kept above, with why; the figures of BENCHMARKS.md must not miss them silently
        sys.exit(f"bench.quality: {', '.join(failed)} failed (see its row)")
    return rows


if __name__ == "__main__":
    main()
