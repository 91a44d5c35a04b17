"""python -m jobs.tune_sweep --data DATA --output SWEEP --trials N [--epochs E] [--resume]"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from jobs.cli import (
    EXIT_INTERRUPTED,
    add_training_gpu_options,
    check_data,
    environment_error,
    environment_line,
    fail,
    gpu_wait_applies,
    init_ray,
    job_parser,
    non_negative_int,
    one_line_errors,
    positive_int,
    refuse_empty_paths,
    refuse_unpacked_outputs,
    run_main,
    training_failed,
    training_on_gpu,
)
from ncf.cluster import joins_a_cluster
from ncf.errors import EXIT_STOPPED, InputError, Interrupted, TryLater
from ncf.registry import track_sweep_model
from ncf.splits import REFIT, VALIDATED
from ncf.staging import Busy
from ncf.train.slot import training_slot
from ncf.train.trainer import RefitDiverged, TrainingInterrupted
from tune.results import BEST, NoTrialFinished
from tune.search_space import SEARCHED
from tune.settings import SweepSettings
from tune.sweep import (
    SweepInterrupted,
    check_sweep_directory,
    failed_trials,
    failures_line,
    refit_best,
    resumed_concurrency,
    run_sweep,
    start_again,
    summary,
    trials_left,
    tune_state_saved,
    unresumable,
)

# The searched dimensions (the tower as its layer widths, not depth and width), with the results.
SHOWN = [
    "trial_id",
    "status",  # done, or error: a failed trial (NaN scores), named again in the line after the table
    BEST,
    "best_epoch",
    "epochs",
    *(name for name in SEARCHED if name not in ("mlp_depth", "mlp_width")),
    "mlp_hidden_dims",
    "is_default",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = job_parser(
        "tune_sweep",
        "Ray Tune + Optuna sweep over AdvancedNCF's dimensions; SWEEP/best is the winner (registered: jobs.models).",
        uses_ray=True,
    )
    p.add_argument("--data", required=True, help="output of jobs.preprocess (visible to every node)")
    p.add_argument("--output", required=True, help="sweep directory")
    p.add_argument(
        "--trials", type=positive_int, default=8, help="points of the search space tried, the defaults first"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=2, help="epochs per trial at most (ASHA stops weak trials sooner)"
    )
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers per trial")
    add_training_gpu_options(p)
    p.add_argument(
        "--concurrent",
        type=non_negative_int,
        default=0,
        help="trials at once (0 = what the cluster fits); recorded when the sweep starts, which --resume keeps",
    )
    p.add_argument(
        "--max-steps-per-epoch", type=non_negative_int, default=0, help="cap each epoch (0 = the whole split)"
    )
    p.add_argument(
        "--val-users",
        type=non_negative_int,
        default=600,
        help="households ranked for each epoch's validation (0 = all)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=SweepSettings.batch_size,
        help="training lists (household x cutoff) per step",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of Optuna's sampler")
    p.add_argument(
        "--refit",
        action="store_true",
        help="then refit the winner on labels through DATA's last day (SWEEP/refit: the deployment model)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --output")
    return p.parse_args(argv)


def sweep_settings(args: argparse.Namespace, use_gpu: bool) -> SweepSettings:
    return SweepSettings(
        data=args.data,
        output=args.output,
        trials=args.trials,
        epochs=args.epochs,
        workers=args.workers,
        use_gpu=use_gpu,
        concurrent=args.concurrent,
        max_steps_per_epoch=args.max_steps_per_epoch,
        val_users=args.val_users,
        batch_size=args.batch_size,
        seed=args.seed,
        refit=args.refit,
    )


def resumed_gpu(setting: str, trained_on_gpus: bool | None) -> str:
    """``--gpu`` for a resume: ``auto`` of a sweep whose trials trained on CPUs goes on on CPUs
    (``no``): started on a laptop and resumed, with the same command, on a cluster with GPUs, it
    was refused as started "with other settings" (a review of tune/, 2026-12-07). One that
    trained on GPUs stays ``auto`` (``yes`` would be refused with the advice ``--gpu no``, which
    the comparison refuses too), and :func:`refuse_gpus_missing` says where none are found;
    given explicitly, compared once Ray is up (:meth:`SweepSettings.check_resumes`)."""
    if setting != "auto" or trained_on_gpus is not False:
        return setting
    print("[sweep] --gpu auto: the sweep's trials trained on CPUs; the trials resumed do too", file=sys.stderr)
    return "no"


def refuse_gpus_missing(args: argparse.Namespace) -> None:
    """A sweep whose trials trained on GPUs, resumed with ``--gpu auto`` where they would not:
    a build without CUDA here is said (no wait would mend it); after ``--gpu-wait`` waited on an
    autoscaling cluster, try later (its nodes may still come); else where GPUs are. Not "started
    with other settings ... the same ones": the flags were the same."""
    from ncf.device import gpu_build_missing

    trained = f"--resume: {args.output}'s trials trained on GPUs"
    missing = gpu_build_missing(training=True)
    if missing:
        raise InputError(f"{trained} and {missing}: install the CUDA builds (make setup ACCEL=cuda)")
    if gpu_wait_applies(args):
        raise TryLater(f"{trained} and too few came within --gpu-wait {args.gpu_wait:g}; try later")
    waits = " (--gpu-wait S waits for an autoscaler to add them)" if joins_a_cluster() else ""
    raise InputError(f"{trained} and this Ray cluster has too few: resume it where GPUs are{waits}")


def gpus_at_once(args: argparse.Namespace, left: Optional[int] = None) -> int:
    """The GPUs the trials at once hold (``--concurrent``, or the count a resumed sweep started
    with; without either, one trial's): what ``--gpu-wait`` asks an autoscaling cluster for, so
    that the trials-at-once count, read from the GPUs up when the sweep starts, is not one trial's.
    ``left``: a resumed sweep's :func:`trials_left`, where already read."""
    if args.resume:  # Tune's count; another --concurrent is refused now, before the wait asks for nodes
        settings = sweep_settings(args, use_gpu=False)
        left = trials_left(settings) if left is None else left
        # At most the trials left: a resume to finish the export or refit runs none.
        at_once = min(resumed_concurrency(settings, {}), max(1, left))
    else:
        at_once = args.concurrent or 1
    return args.workers * max(1, min(at_once, args.trials))


def gpus_for_trials_at_once(args: argparse.Namespace, wanted: int) -> bool:
    """Whether a new sweep with ``--gpu auto`` trains on GPUs, which it does only where the
    cluster has one for every worker of its ``--concurrent`` trials: on fewer it trains on CPUs,
    said, as a training with fewer GPUs than workers does (``--gpu yes`` is refused instead:
    :func:`check_gpus_for_trials_at_once`). Without ``--concurrent`` the GPUs up set the count."""
    from ncf import device

    up = device.cluster_gpus()
    if not args.concurrent or up >= wanted:
        return True
    fits = up // args.workers
    on_gpus = f"--concurrent {fits} trains on GPUs, " if fits else ""
    print(
        f"[gpu] --gpu auto: --concurrent {args.concurrent} needs {wanted} GPUs ({args.workers} workers a trial) and "
        f"the Ray cluster has {up}: the trials train on CPUs ({on_gpus}--gpu yes refuses)",
        file=sys.stderr,
        flush=True,
    )
    return False


def check_gpus_for_trials_at_once(args: argparse.Namespace, wanted: int, waited: bool) -> None:
    """Refuses a set count of trials at once (``--concurrent``, or a resumed sweep's) whose GPUs
    the cluster has not: the trials without one waited for ever (Ray Train retries a worker
    group's start without end) while every running one held the CPU share and threads sized for
    the whole count. Without a set count the sweep sizes it from the GPUs up (:func:`concurrency`)."""
    from ncf import device

    if not (args.concurrent or args.resume):
        return
    up = device.cluster_gpus()
    if up >= wanted:
        return
    # After --gpu-wait waited the GPUs may still come (an autoscaler's nodes starting): try later.
    shortage = TryLater if waited else InputError
    fits = up // args.workers
    if args.resume:  # a sweep started on GPUs resumes on them (settings.json): no --gpu no to offer
        raise shortage(
            f"the resumed sweep runs {wanted // args.workers} trials at once of {args.workers} GPU workers ({wanted} "
            f"GPUs) and the Ray cluster has {up}; resume when it has them"
        )
    raise shortage(
        f"--concurrent {args.concurrent}: {wanted} GPUs for the trials at once ({args.workers} workers each) and the "
        f"Ray cluster has {up}; pass --concurrent {fits} or fewer, or --gpu no"
        if fits
        else f"--concurrent {args.concurrent}: {wanted} GPUs for the trials at once and the Ray cluster has {up}"
    )


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        refuse_empty_paths(args, ("--data", "--output"))
        refuse_unpacked_outputs(args, ("--output",))
        check_data(args.data, runs=(VALIDATED, REFIT) if args.refit else (VALIDATED,))
        check_sweep_directory(args.output, args.data, args.resume)
        trained_on_gpus, auto = None, args.gpu == "auto"
        if args.resume:  # before Ray starts and --gpu-wait waits; whether GPUs train needs the cluster
            resumed = sweep_settings(args, use_gpu=False)
            resumed.check_resumes(skip=("use_gpu",))
            trained_on_gpus = resumed.recorded("use_gpu")
            args.gpu = resumed_gpu(args.gpu, trained_on_gpus)
        init_ray()
        # Before --gpu-wait asks the autoscaler for GPUs: a job that is refused asks for nothing.
        with training_slot(f"jobs.tune_sweep {os.path.abspath(args.output)}"):
            left = trials_left(resumed) if args.resume else None  # reads a resumed sweep's whole state: once
            if left == 0 and not args.refit:
                # It writes, exports and registers what the trials trained: no device is looked
                # for (a GPU sweep finished, its export stopped: refused on the CPUs left once the
                # autoscaler had removed the idle GPU nodes, whatever --gpu said).
                gpu = bool(trained_on_gpus)
            else:
                wanted = gpus_at_once(args, left)
                gpu = training_on_gpu(args, workers=args.workers, wait_for=wanted)
                if auto and trained_on_gpus and not gpu:
                    refuse_gpus_missing(args)
                if gpu and auto and not args.resume and not gpu_wait_applies(args):
                    gpu = gpus_for_trials_at_once(args, wanted)
                if gpu:
                    check_gpus_for_trials_at_once(args, wanted, waited=gpu_wait_applies(args))
            settings = sweep_settings(args, use_gpu=gpu)
            try:
                table = run_sweep(settings, resume=args.resume)
            except SweepInterrupted as e:
                print(f"[sweep] {e}", file=sys.stderr, flush=True)
                sys.exit(EXIT_STOPPED if e.stopped else EXIT_INTERRUPTED)  # 143 for SIGTERM, README's table
            except KeyboardInterrupt:  # a second Ctrl-C inside Tune's loop (its handler takes only the first)
                print(f"[sweep] {interrupted_before_the_end(settings)}", file=sys.stderr, flush=True)
                sys.exit(EXIT_INTERRUPTED)
            except NoTrialFinished as e:  # its results are written: the table says what each trial did
                fail(str(e))
            except OSError as e:  # a full disk writing the results, the plot, SWEEP/best after Tune's loop
                disk_failed(e, settings)
            try:
                return report(table, settings, args)
            except OSError as e:
                disk_failed(e, settings)
            except KeyboardInterrupt:  # the refit's own Ctrl-C ends in report, with its own line
                print(
                    "[sweep] interrupted (Ctrl-C) after every trial finished and SWEEP/best was exported, before the "
                    "job ended; run the same command with --resume to export and register the winner (and finish a "
                    "--refit from its checkpoints); no trial runs again",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(EXIT_INTERRUPTED)


def disk_failed(error: OSError, settings: SweepSettings) -> None:
    """Ends the job on a disk full or closed to this account (:func:`jobs.cli.environment_error`)
    once Tune saved its state: "run the same command" (jobs.cli.run_main's words) would be
    refused ("pass --resume"), so the line says --resume, which runs no finished trial again.
    Another OSError is raised again (a bug's traceback)."""
    if not environment_error(error):
        raise error
    if not tune_state_saved(settings.experiment_dir):
        if os.path.exists(settings.experiment_dir):  # Tune's folder, no state: refused by both commands
            fail(
                f"{environment_line(error)}; free space or fix access, then start the sweep again with a new "
                f"--output, or remove {settings.output} first (Tune had not saved its state)"
            )
        raise error  # nothing of Tune's on disk yet: run_main's own line holds
    damage = unresumable(settings.experiment_dir)
    if damage is not None:  # a --resume would be refused
        fail(
            f"{environment_line(error)}; free space or fix access, then start the sweep again with a new --output, "
            f"or remove {settings.output} first (Tune's state {damage})"
        )
    fail(
        f"{environment_line(error)}; free space or fix access, then the same command with --resume writes the "
        "results, exports and registers the winner (and finishes a --refit); no finished trial runs again"
    )


def interrupted_before_the_end(settings: SweepSettings) -> str:
    """What a Ctrl-C that Tune's handler did not take leaves, as :func:`check_sweep_directory`
    will read it: a sweep to resume where Tune saved its state; where Tune had started without
    saving one, nothing a resume or a new run in that folder accepts; else a folder to run again."""
    if tune_state_saved(settings.experiment_dir):
        damage = unresumable(settings.experiment_dir)
        if damage is None:
            return "sweep interrupted (Ctrl-C); continue it with --resume"
        unresumed = f"Tune's state {damage}: it cannot be resumed"
        return f"sweep interrupted (Ctrl-C); {unresumed}; {start_again(settings.output)}"
    if os.path.exists(settings.experiment_dir):
        return (
            "sweep interrupted (Ctrl-C) before Tune saved its state: it cannot be resumed; "
            f"{start_again(settings.output)}"
        )
    return "sweep interrupted (Ctrl-C) before Tune started; run the same command again"


def registered(version) -> str:
    """A model's registration in words: its version, or None where it was not recorded."""
    return "not registered: the [registry] line says why" if version is None else f"registered as version {version}"


def report(table, settings: SweepSettings, args: argparse.Namespace):
    """The trial table, the failed trials' line, the registration of ``SWEEP/best`` (and with
    ``--refit`` the refit and its registration), then the outcome as the last line, bare JSON."""
    print("\n" + table[[c for c in SHOWN if c in table]].to_string(index=False), flush=True)
    failures = failures_line(table, settings.experiment_dir)
    if failures:
        print(failures, flush=True)
    print(
        f"[sweep] results: {settings.output}/results.parquet (and .csv), "
        f"plot: {settings.output}/sweep.png, best model: {settings.best_dir}",
        flush=True,
    )
    outcome = {**summary(table), "failed_trials": failed_trials(table), "best_model": settings.best_dir}
    outcome["registered_version"] = track_sweep_model(
        settings.best_dir, settings.data, settings.output, candidate=not args.refit
    )
    if args.refit:  # a training too: inside the slot
        try:
            path = refit_best(table, settings)
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            left = f"{e}; " if isinstance(e, Interrupted) else ""  # during the swap of SWEEP/refit: what it left
            print(
                f"[sweep] the refit was interrupted (Ctrl-C); {left}its checkpoints are kept: run the same command "
                "with --resume to finish it from them",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_INTERRUPTED)
        except Busy as e:  # another run writes SWEEP/refit: the refit's checkpoints are kept
            raise Busy(
                f"{e}; SWEEP/best is exported ({registered(outcome['registered_version'])}); the refit's "
                f"checkpoints are kept under {settings.train_dir}: the same command with --resume exports them"
            ) from None
        except RefitDiverged as e:  # the winner's learning rate, on the labels through the data's end
            raise RefitDiverged(
                f"{e}; SWEEP/best is exported ({registered(outcome['registered_version'])}), the validated winner: "
                "python -m jobs.train --refit trains a deployment model of its settings (--model-config: config.json's "
                "model; --lr: lower than metrics.json's sweep row; its unknown_share, if not 0.05, is not an option "
                "there)"
            ) from None
        except InputError:
            raise
        except Exception as e:  # a worker's refusal or failure, which Ray Train wrapped (a traceback before)
            training_failed(
                e,
                f"SWEEP/best is exported ({registered(outcome['registered_version'])}); the refit's checkpoints are "
                f"kept under {settings.train_dir}: once the cause is fixed (the workers' tracebacks are in Ray's "
                "logs), the same command with --resume finishes the refit from them",
            )
        outcome["deployment_model"] = path
        outcome["deployment_version"] = track_sweep_model(
            path, settings.data, settings.output, tags={"validated_version": outcome["registered_version"]}
        )
        print(f"[sweep] deployment model (the winner refit through the data's end): {path}", flush=True)
    # The last line on stdout, bare JSON: a script reads it with tail -n 1 (of the job's own logs under
    # ray job submit, which prints its own lines after them).
    print(json.dumps(outcome), flush=True)
    return table


if __name__ == "__main__":
    run_main(main, "no trial of this run had started: run the same command again")
