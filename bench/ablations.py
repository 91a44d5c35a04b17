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
from ncf.data import layout
from ncf.model.config import SWITCHES


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--workdir", default="artifacts/ablations", help="where the runs' model directories go")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    p.add_argument("--epochs", type=int, default=3, help="epochs at most (early stopping on validation)")
    p.add_argument("--only", nargs="*", choices=SWITCHES, default=list(SWITCHES), help="switches to ablate")
    p.add_argument("--reuse", action="store_true", help="read runs already trained in WORKDIR")
    args = p.parse_args(argv)
    # What the rows were measured on: rows of another DATA or epoch budget are not merged below.
    measured_on = {
        "data": os.path.abspath(args.data),
        "features_version": layout.DataStats(args.data).features_version,
        "epochs": args.epochs,
    }
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
        row = {**summarize(name, runs), **measured_on}
        print(json.dumps({"benchmark": "ablation", **row}), flush=True)
        rows.append(row)
    results = os.path.join(args.workdir, "results.jsonl")
    write_jsonl(results, rows + _rows_not_rerun(results, {row["model"] for row in rows}, measured_on))
    return rows


def _rows_not_rerun(results: str, rerun: set, measured_on: dict) -> list:
    """The rows of an earlier invocation for variants this one left out (``--only``), measured
    on the same DATA, features and epochs (others are dropped, and said): each row keeps its
    own seed count, so a table mixing them still says how each was measured."""
    if not os.path.exists(results):
        return []
    with open(results) as f:
        earlier = [row for row in map(json.loads, f) if row["model"] not in rerun]
    kept = [row for row in earlier if all(row.get(key) == value for key, value in measured_on.items())]
    for row in earlier:
        if row not in kept:
            print(f"[ablations] {results}: {row['model']} dropped: measured on other data or epochs", flush=True)
    return kept


if __name__ == "__main__":
    main()
