"""Ablations: each ModelConfig part switched off in turn, trained and evaluated like the default
model (validated run, test weeks, full ranking), several seeds each; mean +- sd.

python -m bench.ablations --data artifacts/data/cj [--seeds 3] [--epochs 3] [--only use_mf use_timing] [--reuse]

One JSON line per variant (the default model first); the rows go to ``WORKDIR/results.jsonl``
(with an earlier invocation's rows for variants left out by ``--only``), which
``jobs.evaluate --ablations`` puts in the report. ``--reuse`` evaluates the models a previous
invocation trained (with today's evaluation code) instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import os

from bench.runs import summarize, validated_run, write_jsonl
from ncf.model.config import SWITCHES


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--workdir", default="artifacts/ablations", help="where the runs' model directories go")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    p.add_argument("--epochs", type=int, default=3, help="epochs at most (early stopping on validation)")
    p.add_argument("--only", nargs="*", default=list(SWITCHES), help="switches to ablate")
    p.add_argument("--reuse", action="store_true", help="read runs already trained in WORKDIR")
    args = p.parse_args(argv)
    rows = []
    for switch in [None, *args.only]:
        name = "advanced_ncf" if switch is None else f"advanced_ncf without {switch[4:]}"
        runs = [
            validated_run(
                args.data,
                os.path.join(args.workdir, switch or "full", f"seed{seed}"),
                seed,
                args.epochs,
                {} if switch is None else {switch: False},
                args.reuse,
            )
            for seed in range(args.seeds)
        ]
        row = summarize(name, runs)
        print(json.dumps({"benchmark": "ablation", **row}), flush=True)
        rows.append(row)
    results = os.path.join(args.workdir, "results.jsonl")
    write_jsonl(results, rows + _rows_not_rerun(results, {row["model"] for row in rows}))
    return rows


def _rows_not_rerun(results: str, rerun: set) -> list:
    """The rows of an earlier invocation for variants this one left out (``--only``): each row
    keeps its own seed count, so a table mixing them still says how each was measured."""
    if not os.path.exists(results):
        return []
    with open(results) as f:
        return [row for row in map(json.loads, f) if row["model"] not in rerun]


if __name__ == "__main__":
    main()
