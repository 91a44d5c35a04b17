"""Ablations on Complete Journey: each ModelConfig part switched off in turn, trained and
evaluated like the default model (test period, full ranking). One JSON line per variant.

python -m bench.ablations --data artifacts/data/cj [--epochs 1] [--only use_mf use_repeat] [--evaluate-only]

The rows also go to ``WORKDIR/results.jsonl``, which ``jobs.evaluate --ablations`` puts in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jobs import train
from ncf.evaluate.evaluation import evaluate_all
from ncf.rank.recommender import Recommender

SWITCHES = ("use_temporal", "use_attention", "use_hierarchy", "use_mf", "use_mlp", "use_repeat")


def main(argv=None) -> list:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", default="artifacts/ablations")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--only", nargs="*", default=list(SWITCHES))
    p.add_argument(
        "--evaluate-only", action="store_true", help="re-evaluate the model directories a previous run trained"
    )
    args = p.parse_args(argv)
    rows = []
    for switch in args.only:
        started = time.time()
        model_dir = os.path.join(args.workdir, switch)
        if not args.evaluate_only:
            train.main(
                [
                    "--data",
                    args.data,
                    "--output",
                    model_dir,
                    "--epochs",
                    str(args.epochs),
                    "--model",
                    json.dumps({switch: False}),
                ]
            )
        row = evaluate_all(Recommender.load(model_dir), args.data, with_baselines=False)[0]
        row.update(model=f"advanced_ncf without {switch[4:]}", wall_seconds=round(time.time() - started))
        print(json.dumps({"benchmark": "ablation", **row}), flush=True)
        rows.append(row)
    with open(os.path.join(args.workdir, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


if __name__ == "__main__":
    main()
