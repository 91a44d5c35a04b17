"""What ``jobs.train`` does once its arguments are checked: the validated run, its held-out test
figure, its registration, and with ``refit`` the deployment model.

The validated run's labels end where the validation weeks start (early stopping on them); its
model is ranked on the test weeks, which it never saw (``metrics.json``: ``test``). The refit
trains on labels through DATA's last day for the epochs the validated run chose: the model to
deploy, registered with its validated version beside it.

Example::

    plan = TrainingPlan(config=TrainConfig(data=DATA), output="artifacts/model", name="train-1")
    train_evaluate_register(plan)  # -> "artifacts/model"
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from ncf.data import layout
from ncf.errors import InputError
from ncf.evaluate.evaluation import evaluate_all
from ncf.model.config import ModelConfig
from ncf.model.directory import update_metrics, written_dir
from ncf.model.files import BEST_VAL_METRIC, VAL_METRIC
from ncf.registry import track_model
from ncf.splits import REFIT, TEST, VALIDATED
from ncf.train.checkpoint import best_checkpoint, export_model_dir, run_history
from ncf.train.config import TrainConfig
from ncf.train.tensorboard import write_history
from ncf.train.trainer import RefitDiverged, best_epoch, fit, refit_config

TEST_USERS = 100_000  # Complete Journey's test weeks hold 2,078 households: all of them


def log(message: str) -> float:
    """Prints a step of the driver's work after training (minutes at 10M households) and returns
    the moment it started."""
    print(f"[train] {message}", flush=True)
    return time.time()


@dataclass
class TrainingPlan:
    """One ``jobs.train`` run.

    ``output``: the model directory written (the refit one with ``refit``); ``validated_output``:
    the validated model's with ``refit`` (default ``OUTPUT-validated``). ``test_users``: households
    ranked for the test figure, a seeded sample when the test weeks have more (None or 0: all).
    ``fit_options``: :func:`ncf.train.trainer.fit`'s workers, GPU and storage. ``params``: what the
    run records in MLflow (the job's options)."""

    config: TrainConfig
    output: str
    name: str
    refit: bool = False
    validated_output: Optional[str] = None
    test_users: Optional[int] = TEST_USERS
    overwrite: bool = False
    fit_options: Dict = field(default_factory=dict)
    params: Dict = field(default_factory=dict)

    @property
    def validated_dir(self) -> str:
        if not self.refit:
            return self.output
        return self.validated_output or self.output.rstrip("/") + "-validated"

    @property
    def stamp(self) -> str:
        return self.name.removeprefix("train-")


def check_history_length(data: str, overrides: dict) -> None:
    """The model reads no more history purchases than DATA's training lists hold: otherwise every
    worker fails on its first batch, and Ray Train retries it."""
    stored = int(layout.DataStats(data).examples["history_length"])
    wanted = overrides.get("history_length", ModelConfig.history_length)
    if wanted > stored:
        source = "--model-config" if "history_length" in overrides else "the model's default"
        raise InputError(
            f"{data}: history_length {wanted} ({source}) is more than the {stored} history purchases its "
            f"training lists hold; pass --model-config '{{\"history_length\": {stored}}}' or preprocess with "
            f"--history-length {wanted}"
        )


def export_run(result, output: str, data: str, version: str, extra: Dict, overwrite: bool = False) -> str:
    """A finished run's best checkpoint as a model directory at ``output``, its epochs' metrics in
    ``metrics.json`` (with ``extra``) and in TensorBoard's files beside the run."""
    checkpoint, metrics = best_checkpoint(result)
    history = run_history(result)
    path = export_model_dir(
        checkpoint, output, data, {"training": metrics, "history": history, **extra}, version, overwrite=overwrite
    )
    if os.path.isabs(result.path) and os.path.isdir(result.path):
        write_history(history, os.path.join(result.path, "tensorboard"))
    else:  # a --storage URI: Ray's result.path is the URI without its scheme, a relative local path
        print(
            f"[train] TensorBoard's files not written: the run's folder is in remote storage ({result.path}); "
            f"its epochs' metrics are in {os.path.join(output, 'metrics.json')}",
            flush=True,
        )
    return path


def train_evaluate_register(plan: TrainingPlan, progress: Callable[[str], float] = log) -> str:
    """Trains, evaluates and registers ``plan``'s models; returns the model directory to deploy
    (the validated one without ``refit``). Ray must be up."""
    config, data = plan.config, plan.config.data
    validated = fit(config, name=plan.name, **plan.fit_options)
    validated_version = f"{plan.stamp}-{VALIDATED}"
    started = progress(f"exporting the best epoch's model to {plan.validated_dir} (weights, state, MF index)")
    export_run(validated, plan.validated_dir, data, validated_version, {}, plan.overwrite)
    # From here on, this run's own directory: another training may save to the same output.
    validated_dir = written_dir(plan.validated_dir, validated_version)
    households = f"at most {plan.test_users:,} households" if plan.test_users else "every household"
    started = progress(
        f"exported in {time.time() - started:.0f} s; ranking the test weeks ({households}; the products' "
        "stats at their start first, a pass over every purchase)"
    )
    test = evaluate_all(validated_dir, data, TEST, max_users=plan.test_users or None, baselines=(), progress=progress)[
        0
    ]
    progress(f"ranked {test['users']:,} households of the test weeks in {time.time() - started:.0f} s")
    epochs = best_epoch(validated)
    written = written_dir(validated_dir, validated_version)
    update_metrics(written, {"test": test, "best_epoch": epochs}, version=validated_version)
    registered = track_model(validated_dir, data, plan.name, plan.params, candidate=not plan.refit)
    best = validated.metrics.get(BEST_VAL_METRIC, 0.0)
    progress(
        f"validated model: best epoch {epochs}, {VAL_METRIC} {best:.4f}, "
        f"test recall@10 {test['recall@10']:.4f} ndcg@10 {test['ndcg@10']:.4f} -> {validated_dir}"
    )
    if not plan.refit:
        return plan.validated_dir
    try:
        refit = fit(refit_config(config, epochs), name=f"{plan.name}-{REFIT}", **plan.fit_options)
    except RefitDiverged as e:
        raise RefitDiverged(
            f"{e}; the validated model is at {plan.validated_dir}: a lower learning rate, under a new run name, "
            "trains both again"
        ) from None
    summary = {"validated_model": os.path.abspath(plan.validated_dir), "test": test, "best_epoch": epochs}
    progress(f"exporting the deployment model to {plan.output}")
    refit_version = f"{plan.stamp}-{REFIT}"
    path = export_run(refit, plan.output, data, refit_version, {"validated": summary}, plan.overwrite)
    tags = {"validated_version": registered}
    track_model(written_dir(path, refit_version), data, f"{plan.name}-{REFIT}", plan.params, tags=tags)
    progress(f"deployment model (refit on labels through the data's end, {epochs} epochs) -> {path}")
    return path
