"""python -m jobs.train --data DATA --output MODEL [--refit] [--epochs N] [--workers N] [--gpu auto]

The validated run (labels end where the validation weeks start; early stopping on them) is
evaluated on the held-out test weeks (``metrics.json``: ``test``). With ``--refit`` it is written
to MODEL-validated, and the deployment model, refit on labels through DATA's last day with the
epoch count the validated run chose, to MODEL (:mod:`ncf.train.pipeline`).
"""

from __future__ import annotations

import argparse
import os
import time

from jobs.cli import (
    EXIT_INTERRUPTED,
    add_training_gpu_options,
    check_data,
    environment_error,
    environment_line,
    fail,
    init_ray,
    job_parser,
    model_overrides,
    non_negative_int,
    one_line_errors,
    positive_float,
    positive_int,
    refuse_empty_name,
    refuse_empty_paths,
    refuse_unpacked_outputs,
    run_main,
    training_failed,
    training_on_gpu,
)
from ncf.errors import EXIT_STOPPED, InputError, Interrupted, TryLater, stopped_by_sigterm
from ncf.model.directory import CONFIG
from ncf.registry import check_store_outlives_the_job
from ncf.splits import REFIT, VALIDATED
from ncf.staging import check_target, within
from ncf.train.config import TrainConfig
from ncf.train.pipeline import TEST_USERS, TrainingPlan, check_history_length, train_evaluate_register
from ncf.train.sharding import TABLE_LEARNING_RATE_SCALE
from ncf.train.slot import training_slot
from ncf.train.trainer import TrainingInterrupted


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    p = job_parser(
        "train", "Train AdvancedNCF with Ray Train (TorchTrainer); register the model (jobs.models).", uses_ray=True
    )
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument(
        "--output",
        required=True,
        help="model directory to write (the refit one with --refit); built beside it and swapped in at the end, "
        "a symlink (blue/green) is repointed to a new directory beside its target",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output even when it is not a model directory")
    p.add_argument(
        "--refit",
        action="store_true",
        help="after the validated run, refit on labels through DATA's last day with the epochs it chose "
        "(the deployment model, written to --output; the validated one to --validated-output)",
    )
    p.add_argument(
        "--validated-output", default=None, help="with --refit: the validated model (default: OUTPUT-validated)"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help="epochs at most (early stopping on validation)"
    )
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers; >1 shards the embedding tables")
    add_training_gpu_options(p)
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help="training lists (household x cutoff) per step"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=d.learning_rate,
        help=f"learning rate: Adam's for the dense layers; the embedding tables' row-wise Adagrad uses "
        f"{TABLE_LEARNING_RATE_SCALE:g}x it",
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=d.patience,
        help="epochs without a better val NDCG@10 before stopping (a run resumed by --name that stopped early "
        "trains on only with a higher one)",
    )
    p.add_argument(
        "--val-users", type=non_negative_int, default=d.val_users, help="households ranked for validation (0 = all)"
    )
    p.add_argument(
        "--test-users",
        type=non_negative_int,
        default=TEST_USERS,
        help="households ranked for the test figure in metrics.json, a seeded sample when the test weeks "
        "have more (0 = all; at 10M households all would take hours on a core)",
    )
    p.add_argument(
        "--max-steps-per-epoch", type=non_negative_int, default=0, help="cap each epoch (0 = the whole split)"
    )
    p.add_argument(
        "--model-config",
        "--model",
        dest="model",
        metavar="JSON",
        default="{}",
        help='ModelConfig overrides as JSON, e.g. {"mf_embedding_dim": 64} (--model: the older name of this option; '
        "the other jobs' --model is a model directory)",
    )
    p.add_argument("--storage", default="artifacts/ray_results", help="where Ray Train keeps checkpoints")
    p.add_argument(
        "--name", default=None, help="run name (default: train-<UTC date-time>; reuse one to resume an interrupted run)"
    )
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="seed of the weights and the shuffles")
    return p.parse_args(argv)


def check_runs_apart(storage: str, runs, outputs) -> None:
    """Refuses (InputError) a local ``storage`` inside a model output (the export would replace the
    checkpoints) and an output inside one of this job's ``runs`` under it (the checkpoints would
    land in the model). Other folders under ``storage`` are fine: Ray Train writes only its runs."""
    folder = storage[len("file://") :] if storage.startswith("file://") else storage
    if "://" in folder:  # s3://, gs://: no local folder to overlap
        return
    for output in outputs:
        inside = [run for run in runs if within(output, os.path.join(folder, run))]
        if within(folder, output) or inside:
            where = f"{folder} is inside {output}" if not inside else f"{output} is inside the run {inside[0]} there"
            raise InputError(
                f"--storage {storage}: {where}: the model's export would replace the checkpoints, or the "
                "checkpoints land in the model; give directories apart"
            )


def main(argv=None) -> str:
    args = parse_args(argv)
    with one_line_errors():
        refuse_empty_paths(args, ("--data", "--output", "--validated-output", "--storage"))
        refuse_empty_name(args.name)
        refuse_unpacked_outputs(args, ("--output", "--validated-output", "--storage"))
        check_store_outlives_the_job()  # the model is registered after training: a store Ray deletes, refused now
        if args.validated_output and not args.refit:
            raise InputError("--validated-output goes with --refit: without it the validated model is --output")
        name = args.name or time.strftime("train-%Y%m%d-%H%M%S", time.gmtime())
        plan = TrainingPlan(
            config=TrainConfig(
                data=os.path.abspath(args.data),
                model=model_overrides(args.model),  # fail fast, before Ray starts
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                patience=args.patience,
                val_users=args.val_users,
                max_steps_per_epoch=args.max_steps_per_epoch,
                seed=args.seed,
            ),
            output=args.output,
            name=name,
            refit=args.refit,
            validated_output=args.validated_output,
            test_users=args.test_users,  # 0: every household
            overwrite=args.overwrite,
            params=vars(args),
        )
        if args.refit and (within(plan.validated_dir, args.output) or within(args.output, plan.validated_dir)):
            # One inside the other: the refit's export was written into the registered validated
            # model (its manifest then failed), or replaced the folder holding it.
            validated = "--validated-output" if args.validated_output else "the validated model's directory"
            raise InputError(
                f"{validated} {plan.validated_dir}: the same directory as --output {args.output}, or one "
                "inside the other; the refit would replace or damage it: give two directories apart"
            )
        runs = [name, f"{name}-{REFIT}"] if args.refit else [name]
        check_runs_apart(args.storage, runs, {args.output, plan.validated_dir})
        # Before hours of training: a MODEL that must not be replaced is refused now.
        for output in {args.output, plan.validated_dir}:
            check_target(output, CONFIG, "model directory", [args.data], args.overwrite)
        check_data(args.data, runs=(VALIDATED, REFIT) if args.refit else (VALIDATED,))
        check_history_length(args.data, plan.config.model)
        init_ray()
        # Before --gpu-wait asks the autoscaler for GPUs: a job that is refused asks for nothing.
        with training_slot(f"jobs.train {name}"):
            gpu = training_on_gpu(args, workers=args.workers)
            plan.fit_options = dict(num_workers=args.workers, use_gpu=gpu, storage_path=args.storage)
            try:
                return train_evaluate_register(plan)
            except TryLater as e:  # another run writes MODEL: this run's checkpoints are kept
                raise TryLater(
                    f"{e}; this run's checkpoints are kept under {os.path.join(args.storage, name)}: run the same "
                    f"command with --name {name} to export them without training again (the test weeks are "
                    "ranked again)"
                ) from None
            except (TrainingInterrupted, KeyboardInterrupt) as e:  # Ctrl-C: training, or exporting after it
                if isinstance(e, TrainingInterrupted):
                    stopped = str(e)
                else:  # an Interrupted came during the swap of MODEL: what it left
                    left = f"{e}; " if isinstance(e, Interrupted) else ""
                    stopped = f"interrupted (Ctrl-C); {left}the checkpoints are kept"
                fail(f"{stopped}: run the same command with --name {name} to resume from them", EXIT_INTERRUPTED)
            except SystemExit as e:  # SIGTERM (a scheduler, `ray job stop`): what it left, as for Ctrl-C
                if not stopped_by_sigterm(e):
                    raise
                fail(
                    f"stopped (SIGTERM); the checkpoints are kept: run the same command with --name {name} to resume "
                    "from them",
                    EXIT_STOPPED,
                )
            except InputError:
                raise
            except OSError as e:  # a full disk at the export, say: after the training, whose checkpoints stand
                if not environment_error(e):
                    raise
                fail(
                    f"{environment_line(e)}; this run's checkpoints are kept under {os.path.join(args.storage, name)}"
                    f": free space or fix access, then the same command with --name {name} resumes from them (a "
                    "finished training is exported without training again)"
                )
            except Exception as e:  # a worker's refusal or failure, which Ray Train wrapped (a traceback before)
                training_failed(
                    e,
                    f"its checkpoints are kept under {os.path.join(args.storage, name)}: once the cause is fixed "
                    f"(the workers' tracebacks are in Ray's logs), the same command with --name {name} resumes "
                    "from them",
                )


if __name__ == "__main__":
    run_main(main, "nothing was trained or written: run the same command again")
