"""python -m jobs.verify MODEL [--data DATA] [--seal]: check a model directory before it is used.

The checks jobs.deploy makes before a model ranks (:func:`ncf.rank.state.check_model_and_data`:
the checksum manifest, the config, the weights against the config's shapes, the vocabularies and
state it carries), and with ``--data`` those of a DATA directory: its state, a catalog where the
model was trained with one, product ids the model knows. Prints one JSON object; a directory that
fails is a one-line error, exit code 2.

Examples::

    python -m jobs.verify artifacts/model/cj
    python -m jobs.verify current --data artifacts/data/cj   # the registry's current model
    python -m jobs.verify artifacts/model/cj --seal          # re-seal a directory edited by hand
"""

from __future__ import annotations

import json
import os

from jobs.cli import (
    EXIT_INTERRUPTED,
    check_data,
    check_model,
    data_state_paths,
    fail,
    job_parser,
    one_line_errors,
    run_main,
)
from ncf.errors import InputError
from ncf.model.files import METRICS
from ncf.model.integrity import note_verification, write_manifest
from ncf.rank.state import check_model_and_data
from ncf.registry import Registry, StoreUnavailable, is_registry_ref


def parse_args(argv=None):
    p = job_parser("verify", "Check a model directory (and a DATA directory for it) as a rollout would.")
    p.add_argument("model", help="model directory, or current / models:/NAME/VERSION (the registry's)")
    p.add_argument(
        "--data",
        default=None,
        help="also check this DATA for the model (jobs.deploy --data): its state, catalog and product ids",
    )
    p.add_argument(
        "--seal",
        action="store_true",
        help="first write the checksum manifest of the directory as it is now: only for a directory you trust",
    )
    return p.parse_args(argv)


def check_not_registered(model: str, given: str) -> None:
    """Refuses to seal again a directory the registry (``MLFLOW_TRACKING_URI``'s, else this
    directory's artifacts/mlflow.db; the default model name, as the jobs register) records as a
    version, given by its path: its files are that version's record, which --model current and
    promote check against the bytes. A store that does not answer is said, not taken for none."""
    try:
        registry = Registry(create=False)
    except StoreUnavailable:
        raise
    except InputError:  # no registry here: nothing it records
        return
    versions = [row["version"] for row in registry.versions_recording(model)]
    if versions:
        raise InputError(
            f"--seal {given}: the directory is version {', '.join(versions)} of {registry.name} in {registry.shown}, "
            "sealed as it was registered; copy it to a new directory, seal that, then register it "
            "(python -m jobs.models register DIR)"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        with one_line_errors():
            if args.seal and is_registry_ref(args.model):
                # A registered version's files are its record: sealed again in place, verify said
                # "verified" where every --model current job then refused its changed bytes.
                raise InputError(
                    f"--seal {args.model}: a registered version is sealed as it was registered; seal a "
                    "directory by its path, then register it (python -m jobs.models register DIR)"
                )
            model = check_model(args.model, option="MODEL", verify=False)
            if args.seal:
                check_not_registered(model, args.model)
            # None only: an empty --data (a script's unset variable) is refused by check_data, not skipped.
            data = None if args.data is None else check_data(args.data)
            what = f"MODEL {args.model}" + ("" if data is None else f" and --data {data}'s state")
            note_verification(what, [model, *([] if data is None else data_state_paths(data))])
            if args.seal:
                write_manifest(model, unsealed=[METRICS])
            check_model_and_data(model, data)
    except KeyboardInterrupt:
        # The manifest is written to a temporary file and renamed: a --seal stopped left the old one.
        sealed = "; --seal's manifest is replaced whole or not at all" if args.seal else ""
        fail(f"interrupted (Ctrl-C){sealed}", EXIT_INTERRUPTED)
    # The path given, as "data" is; the directory a link resolved to (and was checked) beside it.
    given = args.model if is_registry_ref(args.model) else os.path.abspath(args.model)  # current, models:/...
    report = {"model": given, "verified_dir": model, "verified": True}
    if args.data is not None:
        report["data"] = os.path.abspath(args.data)
    print(json.dumps(report))


if __name__ == "__main__":
    # Its Ctrl-C is said above; run_main adds a full disk's line (--seal's manifest).
    run_main(main, "run the same command again")
