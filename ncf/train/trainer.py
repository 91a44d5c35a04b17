"""The ``TorchTrainer`` around the training loop, and the two runs a deployment needs.

* the *validated* run: labels end where the validation weeks start, early stopping on them; its
  held-out test figures are honest (nothing of the validation or test weeks reached it);
* the *refit*: the same settings and the epoch count the validated run chose, on labels
  through the data's last day: the deployment model, which has seen the latest weeks.

Example::

    validated = fit(TrainConfig(data="artifacts/data/cj"))
    refit = fit(refit_config(TrainConfig(data="artifacts/data/cj"), best_epoch(validated)))
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import sys
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.vocab import Vocabularies
from ncf.errors import InputError, chain_of, raised_within
from ncf.model.files import VAL_METRIC
from ncf.model.integrity import vocab_digest
from ncf.splits import REFIT, VALIDATED
from ncf.train.checkpoint import (
    best_checkpoint,
    check_readable,
    check_same_features,
    check_same_lists,
    check_same_model,
    check_same_training,
    check_same_vocabularies,
    hardware,
    hardware_changed,
    resumed_checkpoint,
    training_settings,
)
from ncf.train.config import TrainConfig, check_refit_epochs
from ncf.train.loop import LOSS_DIVERGED, StepHook, diverged_epoch, train_loop_per_worker

if TYPE_CHECKING:
    import ray.data

# What each task reading a file of training lists asks of Ray: a fraction, so that a read fits
# the CPU left over on a node the training workers share (a whole CPU is rarely free on any one
# node of a multi-node cluster they fill: two trials on two 2-CPU nodes waited for one forever).
READ_CPU = 0.25


def ordered_ingest():
    """Ray Train's ingest options, with the blocks handed to the workers in the order the
    pipeline lists them: without it Ray Data yields blocks as their reads finish, so two runs of
    one seed trained on differently ordered batches (train loss 1.79 against 1.83 after 60 steps,
    validation NDCG@10 0.358 against 0.295 on Complete Journey)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def training_lists(directories: Sequence[str], seed: int) -> "ray.data.Dataset":
    """The training lists of ``directories`` (a cutoff's each, oldest first), each directory's
    Parquet files in a seeded random order, each file read whole by one task: training reads
    them in that order (:func:`ordered_ingest`), so an epoch ends on the lists nearest the
    moments the model will rank. (With the cutoffs in a random order as well, Complete Journey
    scored the same, but the small log without rebuys of ``tests/test_beyond_repeats.py`` fell
    below ALS: 0.180 against 0.210.)

    Within a file the households come in no meaningful order (a scrambled key), so batches need
    no local shuffle buffer, whose per-batch gather of list columns cost Ray Train a tenth of its
    rate. The order depends on the files' rows and the seed only. ``read_parquet`` does not keep
    it: Ray 2.60's reader packs the files' row groups into read tasks of up to 128 MiB, first
    fit, so a small row group is read ahead of the rest of its file, and the blocks that
    ``randomize_block_order`` shuffled followed the row groups, which differ between two
    preprocessings of the same logs: two DATA directories holding the same lists trained seed 0
    to 0.4228 / 0.4606 and 0.4169 / 0.4555 on Complete Journey's test weeks.
    """
    import ray.data

    files = sorted(f for d in directories for f in glob.glob(os.path.join(glob.escape(d), "*.parquet")))
    if not files:
        raise InputError(f"no training lists (*.parquet) in {', '.join(directories)}")
    shuffled = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    position = {os.path.normpath(d): i for i, d in enumerate(directories)}
    # Stable: the seeded order within each directory.
    ordered = sorted(shuffled, key=lambda f: position[os.path.normpath(os.path.dirname(f))])
    paths = ray.data.from_items([{"path": f} for f in ordered], override_num_blocks=len(ordered))
    return paths.map_batches(E.read_list_file, batch_size=1, batch_format="numpy", num_cpus=READ_CPU)


def run_cutoffs(data: str, run: str) -> list:
    """The cutoffs preprocessing built lists for, for ``run`` (validated or refit)."""
    return layout.DataStats(data).cutoffs(run)


def refit_config(validated: TrainConfig, epochs: int) -> TrainConfig:
    """The validated run's settings on the refit lists, for the epochs it chose."""
    return dataclasses.replace(validated, run=REFIT, epochs=max(1, int(epochs)), cutoffs=[], patience=epochs + 1)


def best_epoch(result) -> int:
    """The epoch of the checkpoint a validated run keeps (:func:`best_checkpoint`: its best
    validation NDCG@10, the earliest of equal ones), which the refit trains for."""
    if any(VAL_METRIC in m for _, m in (result.best_checkpoints or [])):
        return int(best_checkpoint(result)[1]["epoch"])
    return int((result.metrics or {}).get("epoch", 1))


# Rank 0 validates alone while the other ranks wait in a broadcast for its verdict: the default
# sample is seconds, every household (val_users 0) hours at 10M, beyond torch's default 30 minutes.
COLLECTIVE_TIMEOUT_S = 1800
WHOLE_VALIDATION_TIMEOUT_S = 12 * 3600
# A floor on validation's pace (150-250 households/s measured on Complete Journey's catalog;
# slower with a million products), so that a large sample is waited for, not retried as a failure.
VALIDATED_HOUSEHOLDS_PER_S = 20


def collective_timeout_s(config: TrainConfig) -> int:
    """How long a worker waits in a collective (Ray Train's ``TorchConfig.timeout_s``): long
    enough for rank 0's validation of ``val_users`` households at :data:`VALIDATED_HOUSEHOLDS_PER_S`."""
    if config.run != VALIDATED:  # a refit does not validate: nothing to wait for
        return COLLECTIVE_TIMEOUT_S
    if config.val_users == 0:
        return WHOLE_VALIDATION_TIMEOUT_S
    return min(WHOLE_VALIDATION_TIMEOUT_S, COLLECTIVE_TIMEOUT_S + config.val_users // VALIDATED_HOUSEHOLDS_PER_S)


def data_cpus(nodes: int) -> float:
    """CPUs that training leaves to Ray Data's readers: one, or a read's share for each of
    ``nodes`` nodes (with CPUs: :func:`cpu_nodes`) if that is more. Workers that take every CPU
    starve the reads that feed them, and training hangs; and a read runs on one node, so what
    is left must fit a read somewhere: left over N nodes, at least 1/N of it is on one of them."""
    return max(1.0, READ_CPU * nodes)


def cpu_nodes() -> int:
    """Live nodes of the Ray cluster with CPUs (1 at least: a head of 0 CPUs waiting for its
    autoscaler's workers counts as one)."""
    import ray

    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))


def worker_resources(num_workers: int, use_gpu: bool, cpu_budget: Optional[float] = None) -> dict:
    """CPUs per training worker: ``cpu_budget`` shared among the workers (a whole CPU each at
    most), by default all of the cluster's CPUs but :func:`data_cpus`. Where the workers would
    take the last free CPUs, leaving none for Ray Data's reads that feed them (beside Serve's
    replicas: two of 0.5 CPU on 2 CPUs, the run hung without a word), they take less; where the
    free CPUs hold neither, a line says the run waits for them (an autoscaler's node, or what
    holds them). Sized once, at the trainer's construction: its retries keep the size."""
    import ray

    if cpu_budget is None:
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        cpu_budget = total - data_cpus(cpu_nodes())
        asked = _per_worker(cpu_budget, num_workers) * num_workers
        if (
            asked <= free < asked + READ_CPU
            and _per_worker(free - READ_CPU, num_workers) * num_workers + READ_CPU <= free
        ):
            cpu_budget = free - READ_CPU
        elif asked + READ_CPU > free:
            print(
                f"[train] {free:g} of the cluster's {total:g} CPUs are free, {asked + READ_CPU:g} wanted for the "
                "workers and a read: the run waits for them (an autoscaler's node, or what holds them: Serve's "
                "replicas, another job, `ray list actors --detail`)",
                file=sys.stderr,
                flush=True,
            )
    per_worker = _per_worker(cpu_budget, num_workers)
    resources = {"CPU": per_worker}
    if use_gpu:
        resources["GPU"] = 1.0
    return resources


def _per_worker(cpu_budget: float, num_workers: int) -> float:
    return min(1.0, max(cpu_budget, 0.25) / num_workers)


def fit(
    config: TrainConfig,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: Optional[str] = None,
    name: Optional[str] = None,
    max_failures: int = 2,
    callbacks: Optional[list] = None,
    cpu_budget: Optional[float] = None,
    step_hook: Optional[StepHook] = None,
):
    """Runs the ``TorchTrainer`` on ``config.run``'s lists; returns its ``ray.train.Result``.

    ``callbacks`` go to the trainer's ``RunConfig`` (a Tune trial passes Tune's
    ``TuneReportCallback``); ``cpu_budget``: see :func:`worker_resources`; ``step_hook``: called
    after every step (fault drills).

    Raises:
        InputError: ``name`` is a run under ``storage_path`` with checkpoints of another model
            configuration (Ray Train would resume from them).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if config.run not in (VALIDATED, REFIT):
        raise ValueError(f"run must be {VALIDATED} or {REFIT}, not {config.run!r}")
    E.check_features_version(config.data)
    config = dataclasses.replace(config, cutoffs=config.cutoffs or run_cutoffs(config.data, config.run))
    storage = storage_location(storage_path)
    run_folder = os.path.join(storage, name) if storage and name else None
    resumed = resumed_checkpoint(run_folder) if run_folder else None
    if resumed is not None:
        checkpoint_dir, saved = resumed
        size = sum(e.stat().st_size for e in os.scandir(checkpoint_dir) if e.is_file())
        if size >= 1 << 30:  # its files are read whole for their checksums: minutes at 10M households
            print(f"[train] checking the checkpoint to resume ({size / 2**30:.1f} GiB, {checkpoint_dir})", flush=True)
        check_readable(checkpoint_dir, saved)
        # A reused name resumes that run: refused here, in one line, if it trained another model
        # or on other vocabularies (the workers check again, for callers that bypass this).
        sizes = Vocabularies.load(layout.vocab_dir(config.data)).sizes()
        check_same_model(run_folder, saved.get("model_config"), config.model_config(sizes).to_dict())
        check_same_vocabularies(run_folder, saved.get("vocab_sha256"), vocab_digest(config.data))
        check_same_lists(run_folder, saved.get("lists_sha256"), E.lists_digest(config.data, config.cutoffs))
        check_same_features(run_folder, saved.get("features_version"))
        check_same_training(run_folder, saved.get("training"), training_settings(asdict(config)))
        check_refit_epochs(name, saved, config)
        print(f"[train] resuming run {name} after epoch {saved.get('epoch')} ({run_folder})", flush=True)
        stopped = stopped_early(name, saved, config)
        if stopped:
            print(f"[train] {stopped}", flush=True)
        moved = hardware_changed(saved.get("hardware"), hardware(num_workers, use_gpu))
        if moved:
            print(f"[train] run {name} {moved}", flush=True)
    elif run_folder and "://" in run_folder:  # the checks above read a local folder
        print(f"[train] run {name} in {run_folder}: whether it resumes is Ray Train's to find", flush=True)
    elif run_folder:
        print(f"[train] starting run {name} (checkpoints in {run_folder})", flush=True)
    train = training_lists([layout.examples_dir(config.data, c) for c in sorted(config.cutoffs)], config.seed)
    keep = 1 if config.run == REFIT else 3
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**asdict(config), "step_hook": step_hook},
        torch_config=TorchConfig(timeout_s=collective_timeout_s(config)),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=worker_resources(num_workers, use_gpu, cpu_budget),
        ),
        datasets={"train": train},
        dataset_config=DataConfig(execution_options=ordered_ingest()),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(
                num_to_keep=keep,
                checkpoint_score_attribute=VAL_METRIC if config.run == VALIDATED else "epoch",
                checkpoint_score_order="max",
            ),
        ),
    )
    result = _fit_interruptibly(trainer)
    refuse_diverged(config, result)
    return result


class RefitDiverged(InputError):
    """A refit whose last epoch diverged: it ended there with no model to export."""


def refuse_diverged(config: TrainConfig, result) -> None:
    """Raises :class:`RefitDiverged` (one line) for a refit whose last epoch diverged (a
    validated run keeps its best epoch instead)."""
    metrics = getattr(result, "metrics", None) or {}
    if config.run != VALIDATED and metrics.get(LOSS_DIVERGED):
        raise RefitDiverged(
            f"the {config.run} run diverged in epoch {metrics.get('epoch')} (its loss is not a number at learning "
            f"rate {config.learning_rate:g}): it has no model to export"
        )


def stopped_early(name: str, saved: Dict, config: TrainConfig) -> Optional[str]:
    """The line saying that a resumed run has nothing to train though ``config`` asks for more
    epochs: it stopped early (``saved``, its checkpoint's state, counts ``patience`` epochs
    without a better validation), and more ``--epochs`` alone trained nothing, silently."""
    epoch, stale = int(saved.get("epoch", 0)), int(saved.get("stale", 0))
    diverged = diverged_epoch(saved)
    if diverged is not None:
        kept = f"its best epoch, {saved['best_epoch']}, is kept" if saved.get("best_epoch") else "no epoch is kept"
        return f"run {name} diverged in epoch {diverged} (its loss was not a number): nothing more is trained; " + (
            kept if config.run == VALIDATED else "nothing to export"
        )
    if config.run != VALIDATED or stale < config.patience or config.epochs <= epoch:
        return None
    return (
        f"run {name} stopped early at epoch {epoch} (patience {config.patience}): nothing to train; "
        "raise --patience to continue"
    )


def storage_location(storage_path: Optional[str]) -> Optional[str]:
    """Where Ray Train keeps a run's checkpoints: a local path made absolute, a URI (``s3://``,
    ``gs://``) as it is, for Ray's pyarrow filesystems (os.path.abspath made it a local ``s3:``)."""
    if not storage_path or "://" in storage_path:
        return storage_path or None
    return os.path.abspath(storage_path)


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a training run; its checkpoints are kept (the same name resumes it)."""


class TrainingFailed(RuntimeError):
    """Ray Train gave up on a run (its workers kept failing); its checkpoints are kept."""


def training_failure(error: BaseException) -> Optional[Exception]:
    """What a job says of ``trainer.fit()``'s ``error``: the InputError a worker refused with (a
    resumed checkpoint of another run or damaged: Ray Train retried it, then wrapped it in its
    ``WorkerGroupError``), else :class:`TrainingFailed` with the first worker's error in one line;
    None where the error is not Ray Train's (this code's own: its traceback stays)."""
    failures = dict(getattr(error, "worker_failures", None) or {})
    causes = [failures[rank] for rank in sorted(failures)] or [getattr(error, "controller_failure", None) or error]
    for cause in causes:
        refused = raised_within(cause, InputError)
        if refused is not None:
            return refused
    if not type(error).__module__.startswith("ray."):
        return None
    where = f" on worker {min(failures)}" if failures else ""
    first = (str(causes[0]).strip().splitlines() or [type(causes[0]).__name__])[0][:300]
    if any("NCCL built in" in str(link) for cause in (error, *causes) for link in chain_of(cause)):
        # Ray Train starts NCCL for GPU workers before the training function (and its node's build
        # check, ncf.device.check_gpu_usable) runs: a GPU node set up with torch's CPU build.
        return InputError(
            f"training failed{where}: a GPU worker's torch has no NCCL (torch's CPU build on a GPU node): set the "
            "GPU nodes up with make setup ACCEL=cuda, or train with --gpu no"
        )
    return TrainingFailed(f"training failed{where} ({type(causes[0]).__name__}: {first}) after Ray Train's retries")


SIGINT_HOOK = "_register_sigint_handler"  # Ray Train 2.60's DataParallelTrainer method


def _fit_interruptibly(trainer):
    """``trainer.fit()``, where Ctrl-C aborts the run and raises :class:`TrainingInterrupted`.
    Called from the main thread, Ray Train installs a SIGINT handler of its own, which aborts the
    run and then exits with status 0 (a scheduler reads success) and stays installed after ``fit``,
    so that Ctrl-C later (exporting, ranking the test weeks) did nothing twice. Here the handler's
    hook only keeps the run's controller: Ctrl-C raises in ``fit``'s wait, and the run is aborted
    as Ray's handler would. ``fit`` stays in the main thread: a thread left waiting in ``ray.get``
    while the interpreter shut Ray down crashed the job (SIGSEGV instead of exit 130, in CI)."""
    if threading.current_thread() is not threading.main_thread():  # a Tune trial: Tune handles Ctrl-C
        return trainer.fit()
    controllers: list = []
    if hasattr(trainer, SIGINT_HOOK):
        setattr(trainer, SIGINT_HOOK, controllers.append)  # Ray Train's hook (2.60), given the controller
    else:  # another Ray Train (v1, or a release that moved it; tests/test_train_job.py checks 2.60's)
        print(f"[train] {type(trainer).__name__} has no {SIGINT_HOOK}: Ctrl-C is Ray Train's to handle", flush=True)
    # Python's own Ctrl-C while it trains: a handler left by another library (Ray Tune's, after a
    # sweep's Tuner.fit, for its --refit) would take the first Ctrl-C and let training go on.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        _abort(controllers)
        raise TrainingInterrupted("training interrupted (Ctrl-C); its checkpoints are kept") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _abort(controllers: list, timeout_s: float = 60.0) -> None:
    """Aborts the run's controller as Ray Train's own Ctrl-C handler does, for a bounded time: a
    controller that does not answer (or a second Ctrl-C) leaves the run to stop with the driver."""
    import ray

    for controller in controllers:
        print(f"[train] Ctrl-C: aborting the run (up to {timeout_s:g} s)", flush=True)
        try:
            ray.get(controller.abort.remote(), timeout=timeout_s)
        except (KeyboardInterrupt, ray.exceptions.RayError):
            pass
