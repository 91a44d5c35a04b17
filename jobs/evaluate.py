"""python -m jobs.evaluate --model MODEL --data DATA: one JSON line per model (trained, then baselines).

``--baselines-only`` (no ``--model``) evaluates the baselines alone from DATA. Tunable
baselines are tuned on the validation weeks once per DATA (kept in DATA/baselines/tuned.json);
``--retune`` searches their grids again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

from jobs.cli import (
    check_data,
    check_model,
    data_state_paths,
    fail,
    job_parser,
    one_line_errors,
    positive_int,
    refuse_empty_paths,
    refuse_unpacked_outputs,
    run_main,
)
from ncf.data.layout import DataStats
from ncf.errors import InputError
from ncf.evaluate.evaluation import (
    BASELINE_ORDER,
    MODEL,
    check_held_out,
    evaluate_all,
    model_on_period,
    period_start,
)
from ncf.evaluate.report import write_placeholder, write_report
from ncf.evaluate.report_inputs import drawable_history, kept_epoch, read_ablation_rows
from ncf.model.directory import ModelDir
from ncf.model.integrity import note_verification, verify_data_state
from ncf.registry import is_registry_ref
from ncf.splits import TEST, VAL
from ncf.staging import check_parent, within


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser("evaluate", "Held-out evaluation of a model directory against the baselines.")
    p.add_argument("--model", default=None, help="model directory (jobs.train or SWEEP/best), or current (jobs.models)")
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument(
        "--split",
        choices=(VAL, TEST),
        default=TEST,
        help="the period evaluated: test is held out; val is where the baselines are tuned and the "
        "validated model's epoch chosen, so its figures are not held out",
    )
    p.add_argument(
        "--max-users",
        type=positive_int,
        default=None,
        help="evaluate a seeded sample of this many households (default: every household of the period); the "
        "baselines are tuned on the validation households (a seeded sample of 20,000 beyond that), once per DATA "
        "(kept in DATA/baselines/tuned.json)",
    )
    p.add_argument("--no-baselines", action="store_true", help="the model alone")
    p.add_argument("--baselines-only", action="store_true", help="no model: the baselines alone, from DATA")
    p.add_argument("--no-als", action="store_true", help="skip the ALS baseline (among the slowest)")
    p.add_argument(
        "--exclude-purchased",
        action="store_true",
        help="rank, and count as relevant, only products each household never bought (every model and baseline)",
    )
    p.add_argument("--retune", action="store_true", help="tune the baselines again on the validation weeks")
    p.add_argument("--report", default=None, help="write an HTML report (charts embedded) to this directory")
    p.add_argument("--ablations", default=None, help="JSON lines of bench.ablations to show in the report")
    return p.parse_args(argv)


def baseline_names(args: argparse.Namespace) -> tuple:
    """The baselines to evaluate, in the report's order."""
    if args.no_baselines:
        return ()
    return tuple(name for name in BASELINE_ORDER if name != "als" or not args.no_als)


def main(argv=None, on_row: Optional[Callable[[dict], None]] = None) -> list:
    """The rows, as printed; ``on_row`` is also given each printed row as it is computed (the rows
    computed before a failure too: the job exits 1 after the last row when one failed)."""
    args = parse_args(argv)
    with one_line_errors():
        refuse_empty_paths(args, ("--model", "--data", "--report", "--ablations"))
        refuse_unpacked_outputs(args, ("--report",))
        check_args(args)
        # A bad file fails before the evaluation.
        ablations = read_ablation_rows(args.ablations) if args.ablations else None
        check_data(args.data)
        note_verification(f"--data {args.data}'s state", data_state_paths(args.data))
        verify_data_state(args.data)
        args.model = None if args.baselines_only else check_model(args.model)
        check_report_apart(args.report, args.model, args.data)  # again: the registry's directory for current
        handle = None if args.baselines_only else ModelDir(args.model)
        # All of it from the directory the handle resolved, and its curves read now: a training
        # repointing the link (or saving over the directory) during the minutes below must not give
        # the report another model's curves, nor the rows another model's figures.
        args.model = None if handle is None else handle.path
        metrics = {} if handle is None else handle.metrics()
        history = drawable_history(metrics) if args.report else None  # drawn on the report alone
        best_epoch = kept_epoch(metrics)
        if args.split == VAL:
            print(
                "[evaluate] --split val: the baselines are tuned and the validated model's epoch chosen on "
                "these weeks, so none of these figures is held out",
                file=sys.stderr,
                flush=True,
            )
        if handle is not None:  # silent minutes at 10M households otherwise; a refit refused first
            check_held_out(handle, args.split, period_start(args.split, DataStats(args.data).boundaries))
            print(
                f"[evaluate] loading {args.model} and the products' stats at the {args.split} period's start "
                "(a pass over every purchase)",
                file=sys.stderr,
                flush=True,
            )
        on_period = (
            None if args.baselines_only else model_on_period(args.model, args.data, args.split, args.exclude_purchased)
        )
        # After model_on_period, which refuses a refit or deployment model: such a model leaves
        # --report as it was, its report or its absence. From now until the report is written, no
        # previous run's page about another model.
        if args.report:
            write_placeholder(args.report, handle.version)
        rows = evaluate_all(
            args.model,
            args.data,
            args.split,
            args.max_users,
            baselines=baseline_names(args),
            retune=args.retune,
            on_period=on_period,
            exclude_purchased=args.exclude_purchased,
            on_row=lambda row: _printed(labelled(row, handle), on_row),  # as each is computed
            progress=lambda line: print(f"[evaluate] {line}", file=sys.stderr, flush=True),  # stdout: the rows
        )
        if args.report:
            ranker, period = on_period
            path = write_report(
                args.report,
                ranker,
                handle.version,
                period,
                rows,
                history,
                ablations,
                ablations_source=args.ablations,
                exclude_purchased=args.exclude_purchased,
                best_epoch=best_epoch,
            )
            print(f"[evaluate] report: {path}", file=sys.stderr, flush=True)  # stdout: the rows alone
        failed = [row for row in rows if "failed" in row]
        if failed:
            fail(
                f"{len(failed)} of {len(rows)} rows failed (every other row is printed above"
                + (", and in the report" if args.report else "")
                + "): "
                + "; ".join(f"{row['model']} in its {row['failed']}" for row in failed)
            )
        return [labelled(row, handle) for row in rows]  # as printed: each names the model it is about


def _printed(row: dict, on_row: Optional[Callable[[dict], None]]) -> None:
    print(json.dumps(row), flush=True)
    if on_row is not None:
        on_row(row)


def labelled(row: dict, handle: ModelDir | None) -> dict:
    """A printed row with the model's version: the model's own row names it as ``model_version``,
    a baseline's (its paired differences are to that model) as ``compared_with_version``."""
    if handle is None:
        return row
    return {**row, ("model_version" if row["model"] == MODEL else "compared_with_version"): handle.version}


def check_args(args: argparse.Namespace) -> None:
    if args.no_baselines and (args.retune or args.no_als):
        raise InputError("--retune and --no-als are about the baselines: not with --no-baselines")
    if args.baselines_only:
        if args.model or args.report or args.no_baselines:
            raise InputError("--baselines-only takes no --model, --report or --no-baselines")
    elif not args.model:
        raise InputError("--model is required (or --baselines-only)")
    if args.ablations and not args.report:
        raise InputError("--ablations goes with --report: they are shown in the report")
    if args.report:
        # Before the evaluation's minutes: a report that could not be written is refused now.
        if os.path.lexists(args.report) and not os.path.isdir(args.report):
            raise InputError(f"--report {args.report}: exists and is not a directory")
        ancestor = check_parent(args.report)
        place = args.report if os.path.isdir(args.report) else ancestor
        if not os.access(place, os.W_OK | os.X_OK):  # it failed at the first write, after minutes, exit 1
            raise InputError(f"--report {args.report}: {place} is not writable by this account")
        check_not_inside_an_output(args.report)
        # A registry reference is no path: checked once resolved (main).
        check_report_apart(args.report, None if is_registry_ref(args.model or "") else args.model, args.data)


# What marks a folder as a model directory or a DATA: a report inside one adds a file its checks
# refuse (a model's manifest holds every file), whichever model or DATA the evaluation reads.
_OUTPUT_MARKERS = (("model directory", ("config.json", "model.pt")), ("DATA", ("stats.json", "vocab")))


def check_not_inside_an_output(report: str) -> None:
    """Refuses (one line) a report folder that is, or is inside, a model directory or a DATA:
    `--report artifacts/model/cj` beside `--model artifacts/model/cj-validated` wrote
    report.html into the deployment model, whose every verification, so every rollout and
    nightly run, then refused it."""
    folder = os.path.realpath(report)
    while True:
        for kind, markers in _OUTPUT_MARKERS:
            if all(os.path.exists(os.path.join(folder, m)) for m in markers):
                raise InputError(f"--report {report}: inside the {kind} {folder}; write the report somewhere else")
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def check_report_apart(report: str | None, model: str | None, data: str) -> None:
    """A report written into MODEL would add a file its manifest does not hold (every later
    verification, so every rollout, refuses it), one into DATA a file no preprocessing wrote;
    one holding either would hold them in its folder. Refused in one line."""
    if not report:
        return
    for flag, path in (("--model", model), ("--data", data)):
        if path and (within(report, path) or within(path, report)):
            raise InputError(f"--report {report}: overlaps {flag} {path}; write the report somewhere else")


if __name__ == "__main__":
    run_main(
        main,
        "the rows printed stand (a --report keeps the previous report or a page saying this evaluation did not "
        "finish): run the same command again",
    )
