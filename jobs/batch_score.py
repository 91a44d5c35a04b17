"""python -m jobs.batch_score --model MODEL --data DATA --output OUT [--k K] [--at DATE|now|data-end] [--explain]

Top-K products for every user of DATA, written to OUT/run_date=YYYY-MM-DD/ (Parquet and a
``_SUCCESS`` marker); see :mod:`ncf.batch.scoring` for the layout and the commit protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from jobs.cli import (
    EXIT_INTERRUPTED,
    check_model,
    fail,
    init_ray,
    job_parser,
    one_line_errors,
    refuse_bad_ray_address,
    refuse_empty_paths,
    refuse_unpacked_outputs,
    run_main,
)
from ncf.batch.commit import OutputFailed
from ncf.batch.scoring import (
    CHUNK_USERS,
    COMPILE_SETTINGS,
    CPUS_PER_ACTOR,
    DRIVER_MAX_USERS,
    MAX_AUTO_BATCH,
    SCORE_IN_SETTINGS,
    TARGET_PARTS,
    BatchScoreConfig,
    InputsChanged,
    ScoringFailed,
    ScoringInterrupted,
    StageIncomplete,
    check_config,
    input_fingerprints,
    resolve_score_in,
    resolved,
    run_batch_scoring,
)
from ncf.batch.verify import VerificationFailed
from ncf.device import GPU_SETTINGS
from ncf.errors import EXIT_STOPPED, InputError, exit_on_sigterm


def parse_args(argv=None) -> argparse.Namespace:
    d = BatchScoreConfig(model="", data="", output="")
    p = job_parser(
        "batch_score",
        "Nightly batch scoring of every user: a Ray Data actor pool, or the driver for a small DATA.",
        uses_ray=True,
    )
    p.add_argument(
        "--model",
        required=True,
        help="model directory (jobs.train or SWEEP/best), or current (the registry's: jobs.models)",
    )
    p.add_argument("--data", required=True, help="output of jobs.preprocess: its users are scored")
    p.add_argument("--output", required=True, help="OUT: partitions OUT/run_date=YYYY-MM-DD/")
    p.add_argument("--k", type=int, default=d.k, help="products per user")
    p.add_argument(
        "--at",
        default=d.at,
        help="the moment scored; its UTC date names the partition: ISO date or datetime (UTC unless it "
        "says), epoch seconds, 'now' (never before data-end) or 'data-end' (the first moment after DATA's last "
        "purchase, the midnight after its last day in a log of dates, for historical datasets); a moment inside "
        "the data is a replay of what was known then",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"users per batch and part file (0: about {TARGET_PARTS} parts, in whole model calls of "
        f"{CHUNK_USERS} users, at most {MAX_AUTO_BATCH:,} users each, so more parts for large datasets)",
    )
    p.add_argument(
        "--actors",
        type=int,
        default=d.actors,
        help="actors of the pool (0: one per CPU, or one per GPU where --gpu takes GPUs; never more than "
        "the batches; above 0, a pool even under --score-in auto)",
    )
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=d.cpus_per_actor,
        help=f"CPUs each scoring actor requests (unset: {CPUS_PER_ACTOR:g}); a pool's setting, so under "
        "--score-in auto it asks for actors",
    )
    p.add_argument(
        "--gpu",
        default=d.gpu,
        choices=GPU_SETTINGS,
        help="auto (GPU actors where they outrank the CPU actors the cluster could run: ranking is "
        "host-bound; the driver scores on its CPU), yes (one actor per GPU; the driver on its own GPU) or no",
    )
    p.add_argument(
        "--score-in",
        default=d.score_in,
        choices=SCORE_IN_SETTINGS,
        help=f"actors (a Ray Data pool), driver (this process, on its own GPU with --gpu yes: no actors "
        f"to start, no Ray) or auto (the driver for at most {DRIVER_MAX_USERS:,} users unless --actors, "
        "--cpus-per-actor or --gpu yes ask for actors)",
    )
    p.add_argument(
        "--compile",
        default=d.compile,
        choices=COMPILE_SETTINGS,
        help="score through torch.compile (in each actor, or the driver): auto (on CPU, when each has enough "
        "users to repay the compilation; never on a GPU, where it gained nothing), yes or no",
    )
    p.add_argument("--progress-every", type=float, default=d.progress_every_s, help="seconds between progress lines")
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="check the staged output before the commit: every user K rows ranked 1..K with scores not "
        "increasing, every row's model version, the cold-start count against _SUCCESS and DATA, and N "
        "sampled users (from N different parts, or every part where there are fewer) ranked again "
        "(products, scores to 1e-4, cold-start flags; products may trade places only where their logits tie); "
        "on failure nothing is committed (the previous partition stays), exit status 1",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="each row also carries reason (a struct; null for a cold start): the product's purchase timing "
        "for the household and the model's scores had it never bought the product or its category, as "
        "Serve's explain gives them (two more model questions a row: several times slower)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an OUT that is not a batch-scoring directory, and replace a run_date=D/ "
        "without _SUCCESS (both refused otherwise: they are not this job's)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="score every user afresh; by default a run keeps the whole parts of a dead run of its date "
        "that had the same MODEL, DATA, settings and moment ('now' continues a dead 'now' run that wrote a "
        "whole part, at its moment and scored_at) and scores the rest",
    )
    return p.parse_args(argv)


def _on_actors(config: BatchScoreConfig) -> bool:
    """Whether the run scores on Ray's actors, where DATA reads (check_config says why not)."""
    try:
        return not resolve_score_in(config)
    except (InputError, OSError, ValueError):  # a DATA check_config refuses in its own line
        return False


def main(argv=None) -> dict:
    args = parse_args(argv)
    with one_line_errors():
        refuse_empty_paths(args, ("--model", "--data", "--output"))
        refuse_unpacked_outputs(args, ("--output",))
        config = BatchScoreConfig(
            model=check_model(args.model, verify=False),  # current: resolved; check_config verifies
            data=args.data,
            output=args.output,
            k=args.k,
            at=args.at,
            batch_size=args.batch_size,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            gpu=args.gpu,
            score_in=args.score_in,
            compile=args.compile,
            progress_every_s=args.progress_every,
            verify=args.verify,
            overwrite=args.overwrite,
            explain=args.explain,
            resume=args.resume,
        )
        config = resolved(config)  # DATA as the run will read it (a link repointed later is not followed)
        verified = input_fingerprints(config.model, config.data)  # of what check_config verifies
        # Read once: the checks below and the run must name one date, and the verification and
        # Ray's start between them can carry a second reading past midnight UTC into the next.
        now = time.time()
        if _on_actors(config):  # before the minutes of verification below, not after them
            refuse_bad_ray_address()
        # Before Ray starts; a date another live run holds is refused here (exit 75), before the
        # verification of MODEL and DATA reads every byte of both.
        try:
            check_config(config, now=now)
        except OutputFailed as failed:  # the date's lock file on a failing disk, a lock-less NFS mount
            fail(str(failed))
        # Decided once: a run in the driver needs no cluster (a local one takes seconds to start).
        in_driver = resolve_score_in(config)
        config = dataclasses.replace(config, score_in="driver" if in_driver else "actors")
        if not in_driver:
            init_ray()  # which turns SIGTERM into SystemExit(143)
        else:  # the same without Ray: a stop unwinds through the commit's way out (its journal finished)
            exit_on_sigterm()
        try:
            summary = run_batch_scoring(config, verified_inputs=verified, now=now)
        except VerificationFailed as failed:
            print(json.dumps({"verify": failed.report}), flush=True)
            fail(str(failed))
        except ScoringInterrupted as stopped:  # Ctrl-C or SIGTERM once the run held the date: what it left
            if stopped.by_sigterm:
                fail(f"stopped (SIGTERM); {stopped}", EXIT_STOPPED)
            fail(f"interrupted (Ctrl-C); {stopped}", EXIT_INTERRUPTED)
        except (InputsChanged, ScoringFailed, StageIncomplete, OutputFailed) as failed:
            # One line each (ScoringFailed: the cause, the parts kept and that a rerun continues).
            fail(str(failed))
        print(json.dumps(summary), flush=True)
        return summary


if __name__ == "__main__":
    run_main(main, "rerun the same command")  # before the run held the date (after it: ScoringInterrupted)
