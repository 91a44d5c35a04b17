"""python -m jobs.train --data DATA --output MODEL [--refit] [--epochs N] [--workers N] [--gpu auto]

The validated run (labels end where the validation weeks start; early stopping on them) is
evaluated on the held-out test weeks (``metrics.json``: ``test``). With ``--refit`` it is written
to MODEL-validated, and the deployment model, refit on labels through DATA's last day with the
epoch count the validated run chose, to MODEL.
"""

from __future__ import annotations

import argparse
import os
import time

from jobs.cli import (
    add_training_gpu_options,
    check_data,
    init_ray,
    job_parser,
    model_overrides,
    non_negative_int,
    one_line_errors,
    positive_float,
    positive_int,
    training_on_gpu,
)
from ncf.data import layout
from ncf.errors import InputError
from ncf.evaluate.evaluation import evaluate_all
from ncf.model.config import ModelConfig
from ncf.model.directory import CONFIG, update_metrics
from ncf.registry import track_model
from ncf.splits import REFIT, TEST, VALIDATED
from ncf.staging import check_target
from ncf.train.checkpoint import VAL_METRIC, best_checkpoint, export_model_dir, run_history
from ncf.train.config import TrainConfig
from ncf.train.sharding import TABLE_LEARNING_RATE_SCALE
from ncf.train.tensorboard import write_history
from ncf.train.trainer import best_epoch, fit, refit_config

TEST_USERS = 100_000  # Complete Journey's test weeks hold 2,078 households: all of them


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
        "--patience", type=positive_int, default=d.patience, help="epochs without a better val NDCG@10 before stopping"
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
    p.add_argument("--model", default="{}", help='ModelConfig overrides as JSON, e.g. {"mf_embedding_dim": 64}')
    p.add_argument("--storage", default="artifacts/ray_results", help="where Ray Train keeps checkpoints")
    p.add_argument(
        "--name", default=None, help="run name (default: train-<UTC date-time>; reuse one to resume an interrupted run)"
    )
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="seed of the weights and the shuffles")
    return p.parse_args(argv)


def _export(result, output: str, data: str, version: str, extra: dict, overwrite: bool) -> str:
    checkpoint, metrics = best_checkpoint(result)
    history = run_history(result)
    metrics = {"training": metrics, "history": history, **extra}
    path = export_model_dir(checkpoint, output, data, metrics, version, overwrite=overwrite)
    write_history(history, os.path.join(result.path, "tensorboard"))
    return path


def _progress(message: str) -> float:
    """Prints a step of the driver's work after training (minutes at 10M households) and returns
    the moment it started."""
    print(f"[train] {message}", flush=True)
    return time.time()


def check_history_length(data: str, overrides: dict) -> None:
    """The model reads no more history purchases than DATA's training lists hold: otherwise every
    worker fails on its first batch, and Ray Train retries it."""
    stored = int(layout.DataStats(data).examples["history_length"])
    wanted = overrides.get("history_length", ModelConfig.history_length)
    if wanted > stored:
        source = "--model" if "history_length" in overrides else "the model's default"
        raise InputError(
            f"{data}: history_length {wanted} ({source}) is more than the {stored} history purchases its "
            f"training lists hold; pass --model '{{\"history_length\": {stored}}}' or preprocess with "
            f"--history-length {wanted}"
        )


def main(argv=None) -> str:
    args = parse_args(argv)
    with one_line_errors():
        if args.validated_output and not args.refit:
            raise InputError("--validated-output goes with --refit: without it the validated model is --output")
        validated_dir = (args.validated_output or args.output.rstrip("/") + "-validated") if args.refit else args.output
        if args.refit and os.path.realpath(validated_dir) == os.path.realpath(args.output):
            raise InputError(
                f"--validated-output {validated_dir}: the same directory as --output; the refit would replace it"
            )
        # Before hours of training: a MODEL that must not be replaced is refused now.
        for output in {args.output, validated_dir}:
            check_target(output, CONFIG, "model directory", [args.data], args.overwrite)
        overrides = model_overrides(args.model)  # fail fast, before Ray starts
        check_data(args.data, runs=(VALIDATED, REFIT) if args.refit else (VALIDATED,))
        check_history_length(args.data, overrides)
        init_ray()
        data = os.path.abspath(args.data)
        config = TrainConfig(
            data=data,
            model=overrides,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            patience=args.patience,
            val_users=args.val_users,
            max_steps_per_epoch=args.max_steps_per_epoch,
            seed=args.seed,
        )
        name = args.name or time.strftime("train-%Y%m%d-%H%M%S", time.gmtime())
        stamp = name.removeprefix("train-")
        gpu = training_on_gpu(args, workers=args.workers)
        fit_options = dict(num_workers=args.workers, use_gpu=gpu, storage_path=args.storage)
        validated = fit(config, name=name, **fit_options)
        started = _progress(f"exporting the best epoch's model to {validated_dir} (weights, state, MF index)")
        _export(validated, validated_dir, data, f"{stamp}-{VALIDATED}", {}, args.overwrite)
        households = f"at most {args.test_users:,} households" if args.test_users else "every household"
        started = _progress(
            f"exported in {time.time() - started:.0f} s; ranking the test weeks ({households}; the products' "
            "stats at their start first, a pass over every purchase)"
        )
        test = evaluate_all(validated_dir, data, TEST, max_users=args.test_users or None, baselines=())[0]
        _progress(f"ranked {test['users']:,} households of the test weeks in {time.time() - started:.0f} s")
        epochs = best_epoch(validated)
        update_metrics(validated_dir, {"test": test, "best_epoch": epochs})
        validated_version = track_model(validated_dir, data, name, vars(args), candidate=not args.refit)
        best = validated.metrics.get("best_" + VAL_METRIC, 0.0)
        print(
            f"[train] validated model: best epoch {epochs}, {VAL_METRIC} {best:.4f}, "
            f"test recall@10 {test['recall@10']:.4f} ndcg@10 {test['ndcg@10']:.4f} -> {validated_dir}",
            flush=True,
        )
        if not args.refit:
            return validated_dir
        refit = fit(refit_config(config, epochs), name=f"{name}-{REFIT}", **fit_options)
        summary = {"validated_model": os.path.abspath(validated_dir), "test": test, "best_epoch": epochs}
        _progress(f"exporting the deployment model to {args.output}")
        path = _export(refit, args.output, data, f"{stamp}-{REFIT}", {"validated": summary}, args.overwrite)
        track_model(path, data, f"{name}-{REFIT}", vars(args), tags={"validated_version": validated_version})
        print(
            f"[train] deployment model (refit on labels through the data's end, {epochs} epochs) -> {path}", flush=True
        )
        return path


if __name__ == "__main__":
    main()
