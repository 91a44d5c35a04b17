"""python -m jobs.models [list | promote VERSION | rollback | register MODEL | resolve [REF]]

The model registry (MLflow, :mod:`ncf.registry`): every model directory jobs.train and
jobs.tune_sweep wrote, with its metrics and lineage, and which one is ``current`` (what
``--model current`` of jobs.deploy, jobs.batch_score and jobs.evaluate resolves to).

Examples::

    python -m jobs.models                  # the versions, current marked with *
    python -m jobs.models promote 7        # version 7 becomes current
    python -m jobs.models rollback         # current goes back to the one before
    python -m jobs.models register artifacts/model/cj --data artifacts/data/cj
    python -m jobs.deploy --model current --detach  # roll whatever is current now out on the running cluster
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from jobs.cli import (
    EXIT_INTERRUPTED,
    HelpFormatter,
    check_data,
    check_model,
    environment_error,
    environment_line,
    fail,
    job_parser,
    one_line_errors,
    refuse_unpacked,
    run_main,
)
from ncf.errors import InputError, TryLater
from ncf.model.files import OtherFormat
from ncf.registry import (
    MODEL_NAME,
    MODELS_CLI,
    CurrentMovedMeanwhile,
    Registry,
    check_trained_on,
    cli_env,
    held_instead,
    is_registry_ref,
    store_errors,
    track_model,
)
from ncf.staging import present


def serve_unchanged(args: argparse.Namespace, registry: Registry) -> str:
    """What rolls the new current version out (a promote or rollback moves the alias only: what
    already runs keeps its model until redeployed): the deploy command names the same store and
    model as this command did (``current`` alone is advanced-ncf in the default store)."""
    ref, env = "current", ""
    if registry.name != MODEL_NAME:
        ref = shlex.quote(f"models:/{registry.name}@current")
    if args.tracking_uri:
        env = cli_env(registry.uri)  # a relative sqlite:///m.db read from any directory
    # The running cluster's (--detach needs one), and its token authentication where it has it.
    cluster = "RAY_ADDRESS=HOST:6379 [RAY_AUTH_MODE=token] "
    deploy = f"{cluster}{env}python -m jobs.deploy --model {ref} --detach [--data DATA]"
    return f"Serve keeps its model until {deploy} rolls this one out"


COLUMNS = [
    ("", "current"),
    ("version", "version"),
    ("kind", "kind"),
    ("model_version", "model_version"),
    ("registered (UTC)", "created"),
    ("test ndcg@10", "test_ndcg_at_10"),
    ("test recall@10", "test_recall_at_10"),
    ("best val ndcg@10", "best_val_ndcg_at_10"),
    ("data stats", "data_stats_sha256"),
    ("code", "code_commit"),
    ("sweep trial", "trial_id"),
    ("weights", "weights_sha256"),
    ("model directory", "model_dir"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(
        "models",
        "The model registry: list the registered model directories, promote one to current, roll back.",
        epilog="The store: $MLFLOW_TRACKING_URI when set, else sqlite:///artifacts/mlflow.db (mlflow ui shows it).",
    )
    _add_store_options(p, after_command=False)
    # The same options after the command too (jobs.models list --tracking-uri URI); SUPPRESS keeps
    # a value given before the command when none is given after it.
    store = argparse.ArgumentParser(add_help=False)
    _add_store_options(store, after_command=True)
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser(
        "list",
        formatter_class=HelpFormatter,
        parents=[store],
        help="the versions, current marked (the default command)",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per version (every tag)")
    promote = commands.add_parser(
        "promote", formatter_class=HelpFormatter, parents=[store], help="make VERSION current"
    )
    promote.add_argument("version", help="a version number (see list)")
    commands.add_parser(
        "rollback",
        formatter_class=HelpFormatter,
        parents=[store],
        help="make the previous current version current again",
    )
    register = commands.add_parser(
        "register",
        formatter_class=HelpFormatter,
        parents=[store],
        help="record an existing model directory as a new version",
    )
    register.add_argument("model", help="model directory (jobs.train or SWEEP/best)")
    register.add_argument("--data", default=None, help="its DATA (default: the path its config.json names)")
    register.add_argument(
        "--not-deployable",
        action="store_true",
        help="a validated model (MODEL-validated of jobs.train --refit, trained without the test weeks): "
        "recorded, never made current by itself",
    )
    resolve = commands.add_parser(
        "resolve", formatter_class=HelpFormatter, parents=[store], help="print the model directory a reference names"
    )
    resolve.add_argument(
        "ref", nargs="?", default="current", help="current, models:/NAME/VERSION or models:/NAME@ALIAS"
    )
    return p.parse_args(argv)


def _add_store_options(p: argparse.ArgumentParser, after_command: bool) -> None:
    """The store's options; after the command their defaults are SUPPRESS (a value given before
    the command stays), so the help spells the default out."""
    p.add_argument(
        "--tracking-uri",
        default=argparse.SUPPRESS if after_command else None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///artifacts/mlflow.db)",
    )
    if after_command:
        p.add_argument("--name", default=argparse.SUPPRESS, help=f"registered model name (default: {MODEL_NAME})")
    else:
        p.add_argument("--name", default=MODEL_NAME, help="registered model name")


def _cell(row: dict, key: str) -> str:
    value = row.get(key, "")
    if key == "current":
        return "*" if value else ""
    if key == "created":
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(value) / 1000)) if value else ""
    if key.endswith("sha256"):
        return str(value)[:12]
    if key == "code_commit":
        return str(value)[:10] + ("+dirty" if row.get("code_dirty") == "true" else "")
    if key == "model_dir":
        return str(value) + _directory_note(row)
    return str(value)


def _directory_note(row: dict) -> str:
    """Why a version's directory no longer gives its model: gone, holding another model (a plain
    --output trained into again), a model of an older format (this code refuses it: retrain it), or
    no model at all, which every command resolving the version refuses. No mark while another run
    finishes a swap there (TryLater): the next list tells."""
    path = str(row.get("model_dir", ""))
    try:
        if not (path and present(path) and os.path.isdir(path)):  # a swap a dead run left half done, finished first
            return " (gone)"
        return " (replaced)" if held_instead(path, row) is not None else ""
    except TryLater:  # another run is finishing a replacement there: nothing to say of the version yet
        return ""
    except OtherFormat as e:  # a model still, of a format this code does not read
        return " (newer format)" if e.newer else " (older format)"
    except InputError:
        return " (not a model)"


def format_table(rows: list) -> str:
    """The versions as an aligned text table, oldest first."""
    cells = [[title for title, _ in COLUMNS]] + [[_cell(row, key) for _, key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def main(argv=None):
    args = parse_args(argv)
    command = args.command or "list"
    try:
        with one_line_errors():
            if command == "register":  # the directory before the store: a refused one creates no store
                check_register_args(args)
            registry = Registry(args.tracking_uri, args.name, create=command == "register")
            with store_errors(registry.uri):
                return _run(command, args, registry)
    except CurrentMovedMeanwhile as e:  # its writes stand: a retry would move current again
        fail(str(e))
    except OSError as e:  # a disk full or closed to this account mid-command (run_main says the others)
        if not environment_error(e) or command not in ("promote", "rollback"):
            raise
        # Its writes may stand: run again, a rollback would go back once more.
        fail(
            f"{environment_line(e)}; {MODELS_CLI} list shows where the registry stands (do not run the "
            f"{command} again before)"
        )
    except KeyboardInterrupt:
        # A register's run is marked KILLED; a promote or rollback stopped midway finishes when run again.
        fail(f"{command} interrupted (Ctrl-C): {MODELS_CLI} list shows where the registry stands", EXIT_INTERRUPTED)


def check_register_args(args: argparse.Namespace) -> None:
    """``register``'s directory (and DATA) checked before the store is opened or a run logged."""
    if is_registry_ref(args.model):
        raise InputError(f"register {args.model}: registers a model directory, not a registry reference")
    # The directory verified is the one registered: a training repointing a blue/green link
    # meanwhile does not slip another in (the run keeps the name given).
    refuse_unpacked("MODEL", args.model)  # a copy Ray deletes after the job: the registry would name it
    args.given, args.model = args.model, check_model(args.model, option="MODEL")
    if args.data is not None:
        check_data(args.data)
        check_trained_on(args.model, args.data)


def _moved_to(registry: Registry, version: str) -> str:
    """The directory of the version a promote or rollback made current, read again for its line.
    The move stands whatever this read meets (a store busy now, a directory replaced since): its
    exit 75 or 2 would have a retried rollback go back once more."""
    try:
        return registry.path_of(version)
    except InputError as e:
        return f"its directory not read again ({e})"


def _run(command: str, args: argparse.Namespace, registry: Registry):
    if command == "list":
        rows = registry.versions()
        if args.command and args.json:
            for row in rows:
                print(json.dumps(row))
            return rows
        if not rows:
            print(f"no versions of {registry.name} in {registry.shown}: python -m jobs.train registers each model")
            return rows
        print(format_table(rows))
        current, history = registry.current(), registry.history()
        before = [v for v in history if v != current][-5:]
        shown = f" (before it: {', '.join(reversed(before))})" if current and before else ""
        print(f"\ncurrent: {current or 'none'}{shown}; store: {registry.shown}")
        return rows
    if command == "promote":
        deployable = registry.marked_deployable(args.version)  # read first: a store failing after the move
        previous, version = registry.promote(args.version)
        path = _moved_to(registry, version)
        if not deployable:
            # stderr: stdout is promote's one line (README), which scripts read.
            print(
                f"note: version {version} was registered --not-deployable (a validated model: its training labels "
                "stop before the test weeks); it is current as asked",
                file=sys.stderr,
            )
        print(f"current: {version} (was {previous or 'none'}): {path}; {serve_unchanged(args, registry)}")
        return version
    if command == "rollback":
        rolled_back, version = registry.rollback()
        path = _moved_to(registry, version)
        print(f"current: {version} (rolled back from {rolled_back}): {path}; {serve_unchanged(args, registry)}")
        return version
    if command == "register":
        run_name = os.path.basename(os.path.abspath(getattr(args, "given", args.model)))
        return track_model(
            args.model, args.data, run_name, strict=True, registry=registry, candidate=not args.not_deployable
        )
    if command == "resolve":
        path = registry.resolve(args.ref)
        print(path)
        return path


if __name__ == "__main__":
    # Its Ctrl-C is said above; run_main adds a full disk's line (a file store, a register's copy).
    run_main(main, f"{MODELS_CLI} list shows where the registry stands")
