"""python -m jobs.evaluate --model MODEL --data DATA: one JSON line per model (trained, then baselines)."""

from __future__ import annotations

import argparse
import json
import os

from jobs.cli import one_line_errors
from ncf.errors import InputError
from ncf.evaluate.evaluation import evaluate_all, model_on_period
from ncf.evaluate.report import write_report
from ncf.model.directory import ModelDir, read_metrics
from ncf.splits import TEST, VAL


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Held-out evaluation of a model directory against the baselines.")
    p.add_argument("--model", required=True, help="model directory (jobs.train or SWEEP/best)")
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument("--split", choices=(VAL, TEST), default=TEST)
    p.add_argument("--max-users", type=int, default=None, help="evaluate a seeded sample of users")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-als", action="store_true", help="skip the ALS baseline (the slowest)")
    p.add_argument("--report", default=None, help="write an HTML report (charts embedded) to this directory")
    p.add_argument("--ablations", default=None, help="JSON lines of bench.ablations to show in the report")
    return p.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    with one_line_errors():
        on_period = model_on_period(args.model, args.data, args.split)
        rows = evaluate_all(
            args.model,
            args.data,
            args.split,
            args.max_users,
            not args.no_baselines,
            not args.no_als,
            on_period=on_period,
        )
        version = ModelDir(args.model).version
        for row in rows:
            print(json.dumps({**row, "model_version": version}), flush=True)
        if args.report:
            ablations = read_jsonl(args.ablations) if args.ablations else None
            history = read_metrics(args.model).get("history")
            ranker, period = on_period
            path = write_report(
                args.report, ranker, version, period, rows, history, ablations, ablations_source=args.ablations
            )
            print(f"[evaluate] report: {path}", flush=True)
        return rows


def read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file (--ablations)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    main()
