"""python -m jobs.demo: the main job on the default dataset (what `make demo` runs).

Preprocesses Complete Journey with Ray Data, trains AdvancedNCF with Ray Train, evaluates it
against the baselines on the held-out weeks and prints the table. Batch scoring and the Serve
deployment join this path when they land (issues 8 and 7).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jobs import evaluate, preprocess, train
from ncf import layout
from ncf.cli import init_ray


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def print_table(rows: list) -> None:
    columns = ["model", "recall@10", "ndcg@10", "hr@10", "mrr", "sampled_hr@10", "sampled_ndcg@10", "users"]
    print(" | ".join(f"{c:>15}" for c in columns))
    for row in rows:
        print(" | ".join(f"{row.get(c, ''):>15}" for c in columns), flush=True)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description="The whole path on Complete Journey.")
    p.add_argument("--workdir", default="artifacts/demo")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reuse-data", action="store_true", help="keep DATA if a previous run preprocessed it")
    args = p.parse_args(argv)
    started = time.time()
    data, model = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "model")
    init_ray()

    _stage("1/3 preprocess Complete Journey (Ray Data)")
    if args.reuse_data and os.path.exists(layout.stats_path(data)):
        print(f"reusing {data}")
    else:
        preprocess.main(["--dataset", "completejourney", "--output", data])

    _stage("2/3 train AdvancedNCF (Ray Train)")
    train.main(["--data", data, "--output", model, "--epochs", str(args.epochs)])

    _stage("3/3 evaluate on the held-out weeks against the baselines")
    rows = evaluate.main(["--model", model, "--data", data])
    with open(os.path.join(args.workdir, "evaluation.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    _stage("results")
    print_table(rows)
    print(f"\nartefacts: data {data}, model {model}, evaluation {os.path.join(args.workdir, 'evaluation.jsonl')}")
    print("not yet in the demo: nightly batch scoring and the Serve endpoint (issues 8 and 7)")
    print(f"demo finished in {time.time() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()
