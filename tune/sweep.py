"""The sweep driver: Ray Tune with Optuna's TPE sampler and ASHA early stopping.

Each trial is :func:`tune.trial.train_trial` (a ``TorchTrainer``), the objective is the best
validation NDCG@10 so far (``best_val_ndcg@10``) at each epoch, ASHA
(:class:`tune.scheduler.EpochASHA`) stops weak trials at 1, 2, 4, ... epochs, and the defaults
are the first point evaluated, so every sweep reports its gain over them. TPE draws at random until 10
trials have finished with a score (Optuna's ``n_startup_trials``): sweeps of 10 trials or fewer are random
searches, plus the defaults (README, "Tuning sweeps"). An interrupted sweep
resumes from Tune's experiment state: finished trials are kept, the searcher continues where it
was, the interrupted trials continue from their last checkpoints, failed trials stay failed
(restored with ``resume_errored=False``: Ray Train retried each ``max_failures`` times; the
table and the job's last line name them), and the missing ones run. ASHA's rungs start empty
again (Tune does not save its scheduler), so a resumed trial is compared only with the results
reported after it.

Example::

    settings = SweepSettings(data="artifacts/data/cj", output="artifacts/sweeps/cj", trials=8)
    table = run_sweep(settings)  # one row per trial; settings.best_dir is a model directory
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import signal
import threading
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import pandas as pd

from ncf.errors import InputError, Interrupted, cannot_access
from ncf.staging import check_target
from ncf.train.checkpoint import check_features_of_runs
from ncf.train.trainer import cpu_nodes, data_cpus
from tune.results import BEST, export_best, plot_sweep, results_table, winner, write_results
from tune.search_space import data_limits, default_point, search_space, to_train_config
from tune.settings import DATA_DIGESTS, SweepSettings, check_same_data
from tune.trial import base_config, train_trial

TRIAL_CPU = 0.01  # the trial function only waits on its trainer; its workers hold the CPUs


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished (Ctrl-C, SIGTERM); its state is saved.
    ``stopped``: by SIGTERM (``ray job stop``, a scheduler), which the job's exit status tells."""

    def __init__(self, message: str, stopped: bool = False) -> None:
        super().__init__(message)
        self.stopped = stopped


def concurrency(settings: SweepSettings, cluster: dict, nodes: int = 1) -> int:
    """Trials at once: ``--concurrent``, or one per ``workers`` GPUs; on CPUs, half of the cluster
    for training and the rest for Ray Data (the readers that feed the workers); never more than
    the trials, nor than the CPUs of ``nodes`` nodes hold (:func:`trial_cpus`). ``cluster``: the
    resources free when the sweep starts (:func:`free_resources`)."""
    if settings.concurrent:
        return min(settings.concurrent, settings.trials)
    if settings.use_gpu:
        fits = int(cluster.get("GPU", 0)) // settings.workers
    else:
        fits = int(cluster.get("CPU", 1) // (2 * settings.workers))
    cpus = cluster.get("CPU", 0.0)
    if cpus > 0:  # GPUs say nothing of the CPUs: 8 GPUs on 3 CPUs were 8 trials, which trial_cpus refused
        fits = min(fits, trials_the_cpus_hold(cpus, nodes))
    return max(1, min(fits, settings.trials))


def started_concurrency(settings: SweepSettings) -> int:
    """The trials at once of the sweep being resumed: Tune restores the count it started with
    from its ``tuner.pkl`` (the file ``Tuner.restore`` unpickles), whatever a resume asks."""
    import ray.cloudpickle

    experiment = settings.experiment_dir
    # Its callers come after check_sweep_directory, which refuses a --resume with no sweep: one
    # missing here is the file alone gone from a sweep Tune saved, which no resume restores.
    path = os.path.join(experiment, "tuner.pkl")
    try:
        with open(path, "rb") as f:
            return int(ray.cloudpickle.load(f)["_tune_config"].max_concurrent_trials or 0)
    except ImportError as e:
        if (e.name or "ray").split(".")[0] == "ray":  # of another Ray: Tune.restore would fail alike
            raise _tuner_state_lost(path, e) from None
        # The sweep's code (tune, ncf) or a package it imports, not importable here: the sweep is whole.
        raise InputError(
            f"--resume: {path} needs the module {e.name!r}, which this Python cannot import: resume it where the "
            "sweep's code and packages are (the project's directory after make setup; a job's --working-dir)"
        ) from None
    except OSError as e:
        if not isinstance(e, FileNotFoundError):  # no permission, a share gone: the file may be whole
            raise InputError("--resume: " + cannot_access(f"read {path}", e)) from None
        raise _tuner_state_lost(path, e) from None
    except Exception as e:  # noqa: BLE001 - truncated, or of another Ray: Tune.restore would fail alike
        raise _tuner_state_lost(path, e) from None


def _tuner_state_lost(path: str, error: BaseException) -> InputError:
    return InputError(
        f"--resume: {path} does not load ({type(error).__name__}: {error}); start the sweep again with a new --output"
    )


def resumed_concurrency(settings: SweepSettings, cluster: dict, nodes: int = 1) -> int:
    """:func:`started_concurrency` (at most the trials); a ``--concurrent`` that differs is
    refused in one line."""
    started = min(started_concurrency(settings), settings.trials)
    asked = min(settings.concurrent, settings.trials)
    if asked and started and asked != started:
        raise InputError(
            f"--resume: the sweep runs {_counted(started, 'trial')} at once (Tune keeps the count it started with); "
            f"resume it without --concurrent or with --concurrent {started}"
        )
    return started or concurrency(settings, cluster, nodes)


MIN_TRIAL_CPUS = 0.25  # a trial's workers together; below it a trial's steps crawl
# Besides its workers a trial holds its Tune actor's TRIAL_CPU; the second one is a margin (Ray
# Train's controller asks for none).
BESIDE_TRIAL_CPUS = 2 * TRIAL_CPU


def trials_the_cpus_hold(cluster_cpus: float, nodes: int = 1) -> int:
    """The most trials at once that :func:`trial_cpus` accepts on ``cluster_cpus`` CPUs."""
    return int(_floored((cluster_cpus - data_cpus(nodes)) / (MIN_TRIAL_CPUS + BESIDE_TRIAL_CPUS), 0))


def trial_cpus(concurrent: int, free_cpus: float, resume: bool, nodes: int = 1, held: str = "") -> float:
    """Each trial's share of the CPUs for its workers, :func:`ncf.train.trainer.data_cpus` left
    to Ray Data: a trial whose read tasks find no node with room waits forever. ``free_cpus``:
    the CPUs free when the sweep starts; ``held``: what holds the cluster's others, "" where
    nothing does (:func:`free_resources`). Refuses such a sweep, naming what holds the CPUs; on a
    cluster of no CPUs yet (a head of 0 CPUs whose autoscaler has yet to add workers) the trials
    take the least share and wait for nodes, as it says."""
    reserve = data_cpus(nodes)
    # Floored: a share rounded up would take from what the reads need.
    budget = _floored((free_cpus - reserve) / concurrent - BESIDE_TRIAL_CPUS, 2)
    if budget >= MIN_TRIAL_CPUS:
        return budget
    needs = reserve + concurrent * (MIN_TRIAL_CPUS + BESIDE_TRIAL_CPUS)
    where = _counted(free_cpus, "free CPU" if held else "CPU") + (f" ({held})" if held else "")
    what = (
        f"{where} cannot hold {_counted(concurrent, 'trial')} at once (each trial's workers "
        f"take {MIN_TRIAL_CPUS:g} at least, and Ray Data's readers keep {_counted(reserve, 'CPU')})"
    )
    if free_cpus <= 0 and not held:
        print(f"[sweep] {what}: waiting for the cluster to reach {needs:g} CPUs", flush=True)
        return MIN_TRIAL_CPUS
    raise InputError(f"{what}: {_cpus_remedy(concurrent, needs, trials_the_cpus_hold(free_cpus, nodes), resume, held)}")


def _cpus_remedy(concurrent: int, needs: float, fits: int, resume: bool, held: str) -> str:
    """What a sweep that :func:`trial_cpus` refuses can do: fewer trials at once, if one fits; else
    more CPUs, or (``held``: what holds the others) the CPUs others hold."""
    free = "free " if held else ""
    if resume:
        # ``concurrent``: the count the sweep started with, or the trials it has left where fewer.
        remedy = (
            "a resumed sweep runs its trials left at once up to the count it started with: "
            f"resume it on {needs:g} {free}CPUs or more"
        )
    elif fits >= 1:
        return f"pass --concurrent {fits} or fewer"
    else:
        remedy = (
            f"a sweep needs {needs:g} free CPUs at least"
            if held
            else f"a sweep needs a cluster of {needs:g} CPUs at least"
        )
    return remedy + ("; stop what holds the others, or add nodes" if held else "")


# CPUs held that are float noise of Ray's accounting (fractions of CPUs given back), not a holder.
HELD_NOISE = 0.005


def free_resources() -> Tuple[Dict[str, float], str]:
    """The cluster's resources free now, what a sweep sizes its trials from, and, where others
    hold some of its CPUs, how many, in words ("" where none are). Sized from all of the
    cluster's CPUs, a sweep beside Serve's replicas left Ray Data's reads no room: its trial hung,
    reads never started."""
    import ray

    free = ray.available_resources()
    total = ray.cluster_resources().get("CPU", 0.0)
    held = total - free.get("CPU", 0.0)
    if held < HELD_NOISE:
        return free, ""
    return free, (
        f"{round(held, 2):g} of the cluster's {total:g} held by other actors or jobs, Serve's replicas or a "
        "training: `ray list actors --detail` names them"
    )


def _floored(value: float, decimals: int) -> float:
    """``value`` floored at ``decimals``, after float noise (3.51 / 0.27 is 12.999999999999998)."""
    scale = 10**decimals
    return math.floor(round(value * scale, 6)) / scale


def _counted(count: float, noun: str) -> str:
    """``1 trial``, ``2 trials``, ``1.5 CPUs``."""
    return f"{count:g} {noun}" if count == 1 else f"{count:g} {noun}s"


def trial_threads(settings: SweepSettings, concurrent: int, free_cpus: float) -> int:
    """Torch threads of each trial's workers: the cluster's free CPUs (the others' cores are busy
    with what holds them) shared among every worker of the trials that run at once (each worker
    caps them at the CPUs it may run on, by its affinity and Ray's count of its node, shared among
    the trial's workers on that node: ``ncf.train.loop.worker_threads``)."""
    return max(1, int(free_cpus // (concurrent * settings.workers)))


def trial_sizes(
    settings: SweepSettings, at_once: int, free_cpus: float, resume: bool, nodes: int = 1, held: str = ""
) -> Tuple[float, int]:
    """Each trial's :func:`trial_cpus` and :func:`trial_threads` for ``at_once`` trials running
    together; 0 of them (a resume with no trial left, which only writes, exports or refits) is
    no trial to size, whatever the cluster holds now."""
    if at_once < 1:
        return MIN_TRIAL_CPUS, 1
    budget = trial_cpus(at_once, free_cpus, resume, nodes, held)
    if free_cpus <= 0 and at_once == 1:
        # No CPU yet (a head of 0 CPUs before its autoscaler's first worker): the one trial takes the
        # cores of the node it lands on (0: the worker's own count), not one thread for good.
        return budget, 0
    return budget, trial_threads(settings, at_once, free_cpus)


def _trainable(settings: SweepSettings, at_once: int, free_cpus: float, resume: bool, nodes: int, held: str = ""):
    from ray import tune

    budget, threads = trial_sizes(settings, at_once, free_cpus, resume, nodes, held)
    fn = tune.with_parameters(train_trial, settings=settings, cpu_budget=budget, torch_threads=threads)
    return tune.with_resources(fn, {"cpu": TRIAL_CPU})


def _tuner(settings: SweepSettings, trainable, resume: bool):
    from ray import tune

    from tune.scheduler import EpochASHA, EpochOptunaSearch
    from tune.tracking import sweep_store, trial_logger

    experiment = settings.experiment_dir
    if resume:  # resumed_concurrency has found its tuner.pkl, what Tuner.can_restore looks for
        print(f"[sweep] resuming {experiment}", flush=True)
        sweep_store()  # the restored logger's store: its trials' runs would be lost on one that does not open
        # Failed trials stay failed (Ray Train retried each max_failures times): restored, they would
        # run beside the trials-at-once Tune allows (its limiter no longer counts them), in CPU
        # shares sized for that count, and leave Ray Data's readers no room.
        try:
            failed = saved_trials(experiment, "ERROR")
        except (ValueError, OSError):  # a state file Tune cannot read: the restore below meets it too
            failed = 0
        if failed:
            print(f"[sweep] {_counted(failed, 'failed trial')} not run again (the table shows its error)", flush=True)
        # check_sweep_directory has found Tune's experiment state: without it Tuner.restore raises
        # nothing, and its fit starts over with no search space (an OptunaSearch RuntimeError).
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
    limits = data_limits(settings.data)
    # The best epoch's score, as the table ranks the trials: with patience of every epoch the
    # last epoch is often not the best, and Optuna would model another objective than the winner's.
    default = default_point(limits)
    searcher = EpochOptunaSearch(metric=BEST, mode="max", points_to_evaluate=[default], seed=settings.seed)
    print(
        f"[sweep] {_counted(settings.trials, 'trial')}, {settings.concurrent} at a time, "
        f"up to {_counted(settings.epochs, 'epoch')} each",
        flush=True,
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(limits),
        tune_config=tune.TuneConfig(
            metric=BEST,
            mode="max",
            search_alg=searcher,
            scheduler=EpochASHA(last_epoch=settings.epochs, baseline=default),
            num_samples=settings.trials,
            max_concurrent_trials=settings.concurrent,
        ),
        # Every trial an MLflow run (its point, every epoch's metrics): ncf.registry.
        run_config=tune.RunConfig(
            name="sweep", storage_path=settings.tune_dir, verbose=1, callbacks=[trial_logger(settings.output)]
        ),
    )


def finished_trials(grid) -> int:
    """Trials that ended on their own (trained every epoch, stopped by ASHA, or failed), read
    from the experiment state Tune saved on disk: what a resume would not run again. Not a count
    of successes: the failed ones are :func:`failed_trials` of the table.

    Not ``grid.num_terminated``: after Ctrl-C, Tune saves its state and then stops the running
    trials, marking them TERMINATED in the grid it returns, while the saved state keeps them
    RUNNING (so ``--resume`` reruns them). Nor ``done`` in a trial's last result: a trial
    restored by ``--resume`` comes back without it.
    """
    return saved_trials(grid.experiment_path, "TERMINATED", "ERROR", filesystem=grid.filesystem)


def trials_left(settings: SweepSettings) -> int:
    """The trials a resume of ``settings``' sweep still runs: those Tune saved as neither ended nor
    failed; all of them where no saved state reads (the resume meets it)."""
    try:
        return max(0, settings.trials - saved_trials(settings.experiment_dir, "TERMINATED", "ERROR"))
    except (ValueError, InputError, OSError):
        return settings.trials


def saved_trials(experiment: str, *statuses: str, filesystem=None) -> int:
    """The trials of ``statuses`` (none given: every trial) in the experiment state Tune saved
    under ``experiment``."""
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(experiment, storage_filesystem=filesystem).trials
    return sum(1 for trial in saved if not statuses or trial.status in statuses)


def start_again(output: str) -> str:
    """What to do with a sweep at ``output`` that cannot be resumed, in words."""
    return f"start it again with a new --output, or remove {output} first"


def stopped_words(grid, settings: SweepSettings, stop: str) -> str:
    """What a sweep stopped by ``stop`` (its words) left, and what to do: continue it, or, where
    Tune saved no trial (stopped during its start-up), start it again (a resume cannot restore
    that state)."""
    if not saved_trials(grid.experiment_path, filesystem=grid.filesystem):
        return f"{stop}: stopped before its first trial: there is nothing to resume; {start_again(settings.output)}"
    return f"{stop} with {finished_trials(grid)} of {settings.trials} trials finished; continue it with --resume"


@contextlib.contextmanager
def tunes_signals():
    """Ctrl-C and SIGTERM around Tune's ``fit``; yields what says whether a SIGTERM came.

    SIGTERM (``ray job stop``, a scheduler) stops Tune's loop as a first Ctrl-C does: Tune saves
    its experiment state, stops the trials and ends their MLflow runs KILLED
    (``on_experiment_end``). The job's own SIGTERM handler raised SystemExit inside the loop, which
    Tune cleans up after only on an Exception: the runs stayed RUNNING and the last state was not
    saved. Tune takes SIGINT with a handler it installs for its loop and removes once it fires, so
    SIGTERM goes to it while it is there; else (before the loop, or a second SIGTERM: Tune's
    "send SIGTERM to skip") to the handler of before the block.

    Both handlers of before the block are put back after it: Tune keeps its SIGINT handler after
    a run that ended normally, and the first Ctrl-C of the export, registration and refit after
    it was swallowed ("ending Ray Tune run"). So is SIGUSR1's, which Tune takes as a Ctrl-C for
    its loop and kept after it, swallowing a scheduler's SIGUSR1 (Slurm's ``--signal``) for good."""
    signalled = SimpleNamespace(received=False)
    if threading.current_thread() is not threading.main_thread():  # no handlers there, nor Tune's
        yield signalled
        return
    sigint_before = signal.getsignal(signal.SIGINT)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    sigusr1_before = signal.getsignal(signal.SIGUSR1)

    def stop_as_ctrl_c(signum, frame):
        tunes = signal.getsignal(signal.SIGINT)
        if tunes == sigint_before or not callable(tunes):
            _pass_on(sigterm_before, signum, frame)
            return
        signalled.received = True
        tunes(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, stop_as_ctrl_c)
    try:
        yield signalled
    finally:
        signal.signal(signal.SIGTERM, sigterm_before)
        signal.signal(signal.SIGINT, sigint_before)
        signal.signal(signal.SIGUSR1, sigusr1_before)


def _pass_on(handler, signum: int, frame) -> None:
    """``signum`` to ``handler`` as if it had been installed: a function is called; the default
    action (SIG_DFL) is put back and the signal raised again; an ignored one is dropped."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def check_sweep_directory(output: str, data: str, resume: bool) -> None:
    """Refuses (one line) an ``output`` that holds ``data`` or is a directory of something else,
    a started sweep without ``--resume``, and a ``--resume`` with nothing to resume: checks a job
    makes before Ray starts."""
    # A sweep that stopped before Tune started holds only its settings.json: still a sweep's.
    started = os.path.exists(os.path.join(output, "settings.json"))
    check_target(
        output,
        "settings.json" if started else "tune",
        "sweep directory",
        [data],
        remedy="pick another --output",
        writes_beside=False,  # Tune writes inside it
    )
    experiment = os.path.join(output, "tune", "sweep")
    if resume and not os.path.exists(experiment):
        raise InputError(f"--resume: no sweep to resume at {experiment}")
    if os.path.exists(experiment) and not tune_state_saved(experiment):
        # Without --resume too: "pass --resume to continue it", then this refusal, was the old pair.
        raise InputError(
            f"{'--resume: ' if resume else ''}{output} holds a sweep stopped before Tune saved its state: it cannot "
            f"be resumed; {start_again(output)}"
        )
    # Without --resume too: "pass --resume", then this refusal, would be the pair again.
    damage = tune_state_damage(experiment) if os.path.exists(experiment) else None
    if damage is not None:
        raise InputError(
            f"{'--resume: ' if resume else ''}Tune's state {damage}: Tune would start the sweep over without "
            f"its search space; it cannot be resumed: {start_again(output)}"
        )
    if not resume and os.path.exists(experiment):
        raise InputError(f"{output} already holds a sweep: pass --resume to continue it, or pick a new --output")


def tune_state_saved(experiment: str) -> bool:
    """Whether Tune saved its experiment state (``experiment_state-*.json``) under ``experiment``,
    what a resume restores; ``tuner.pkl`` alone is written before Tune's first step."""
    from ray.tune.execution.tune_controller import TuneController

    pattern = TuneController.CKPT_FILE_TMPL.format("*")
    return os.path.isdir(experiment) and any(fnmatch.fnmatch(name, pattern) for name in os.listdir(experiment))


def tune_state_damage(experiment: str) -> Optional[str]:
    """Why the experiment state a resume restores (the newest, as Tune picks it) cannot be read,
    naming it; None where it reads. Tune writes it in place, so a kill or a full disk mid-write
    leaves it cut short, and Tune's restore, failing, starts the sweep over. Read as plain JSON:
    nothing in it is unpickled here. One the OS will not read is an InputError of its own (no
    advice to start over: the state may be whole)."""
    from ray.tune.execution.tune_controller import TuneController

    pattern = TuneController.CKPT_FILE_TMPL.format("*")
    path = os.path.join(experiment, max(fnmatch.filter(os.listdir(experiment), pattern)))
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{path} does not read ({type(e).__name__}: {e})"
    except OSError as e:  # no permission, a share gone: the state may be whole
        raise InputError(cannot_access(f"read Tune's state {path}", e)) from None
    missing = [key for key in ("trial_data", "runner_data") if not isinstance(state, dict) or key not in state]
    if missing:
        return f"{path} lacks {' and '.join(missing)}"
    # Stopped in Tune's start-up, before its first trial: Tune fails restoring an empty list of them.
    return f"{path} holds no trial (the sweep was stopped before its first one)" if not state["trial_data"] else None


def unresumable(experiment: str) -> Optional[str]:
    """Why the Tune state saved under ``experiment`` cannot be resumed (:func:`tune_state_damage`),
    for what a stopped sweep says it left; None where it reads, or where the OS will not read it
    (the state may be whole: a resume says so in its own line)."""
    try:
        return tune_state_damage(experiment)
    except (InputError, OSError, ValueError):  # ValueError: the state file gone since it was found
        return None


def run_sweep(settings: SweepSettings, resume: bool = False) -> pd.DataFrame:
    """Runs (or resumes) the sweep; writes the results, the plot and ``best/``; returns the table."""
    check_sweep_directory(settings.output, settings.data, resume)
    free, held = free_resources()  # not the cluster's all: Serve's replicas, another job may hold some
    if resume:
        settings.check_resumes()
        # Trials of older code learnt other feature definitions: refused here in one line, not
        # inside each trial (where Tune keeps the error and the sweep would still export one).
        check_features_of_runs(settings.train_dir, "start the sweep again with a new --output")
    nodes = cpu_nodes()
    # Resolved once: Tune keeps the count a sweep started with through every resume.
    settings.concurrent = resumed_concurrency(settings, free, nodes) if resume else concurrency(settings, free, nodes)
    # Sized for the trials that run at once: on a resume at most those left (none: only the export
    # and refit), which a cluster smaller than the sweep's first one may hold.
    at_once = min(settings.concurrent, trials_left(settings)) if resume else settings.concurrent
    trainable = _trainable(settings, at_once, free.get("CPU", 0.0), resume, nodes, held)  # refuses what does not fit
    if not resume:
        settings.record()
    with tunes_signals() as sigterm:
        grid = _tuner(settings, trainable, resume).fit()
    if sigterm.received:  # whatever finished meanwhile: the job was asked to stop
        raise SweepInterrupted(stopped_words(grid, settings, "sweep stopped (SIGTERM)"), stopped=True)
    # Tune's handler is gone: Ctrl-C from here on raises KeyboardInterrupt, the job's one line too.
    try:
        return _write_sweep(grid, settings)
    except Interrupted as stopped:  # during the swap of SWEEP/best: what it left
        raise SweepInterrupted(f"{EXPORT_INTERRUPTED} ({stopped})") from None
    except KeyboardInterrupt:
        raise SweepInterrupted(EXPORT_INTERRUPTED) from None


EXPORT_INTERRUPTED = (
    "sweep interrupted (Ctrl-C) after Tune's loop ended, while its results were written and SWEEP/best "
    "exported; run the same command with --resume to write, export and register them (finished trials do not "
    "run again)"
)


def _write_sweep(grid, settings: SweepSettings) -> pd.DataFrame:
    """The results, plot and ``SWEEP/best`` of a fitted ``grid``: SweepInterrupted where Tune
    returned before every trial finished. A resume of a sweep whose every trial finished comes
    here again at once (Tune restores them all, runs none), so it writes and exports them anew."""
    if finished_trials(grid) < settings.trials:  # Tune returns normally after Ctrl-C, with its state saved
        raise SweepInterrupted(stopped_words(grid, settings, "sweep interrupted"))
    # Before a winner is chosen: trials that started before DATA was preprocessed again are not
    # comparable with the others, and the winner's export would read the new DATA.
    check_same_data(settings.output, settings.data, settings.recorded(DATA_DIGESTS), running=True)
    table = results_table(grid, settings.data, settings.train_dir)
    write_results(table, settings.output)
    plot_sweep(table, os.path.join(settings.output, "sweep.png"))
    export_best(table, settings)
    return table


def refit_best(table: pd.DataFrame, settings: SweepSettings) -> str:
    """The winning point refit on labels through the data's end, for the epochs it chose
    (``SWEEP/refit``, the deployment model; ``SWEEP/best`` stays the validated winner)."""
    from ncf.train.pipeline import export_run
    from ncf.train.trainer import fit, refit_config

    best = winner(table)
    config = refit_config(to_train_config(best.to_dict(), base_config(settings)), int(best["best_epoch"]))
    result = fit(
        config,
        num_workers=settings.workers,
        use_gpu=settings.use_gpu,
        storage_path=settings.train_dir,
        name=f"{best['trial_id']}-refit",
    )
    validated = {"validated": {"trial_id": best["trial_id"]}}
    return export_run(result, settings.refit_dir, settings.data, f"sweep-{best['trial_id']}-refit", validated)


def summary(table: pd.DataFrame) -> dict:
    """The winner (``SWEEP/best``) against the default point: both scores and the relative gain."""
    best = winner(table)  # run_sweep has exported it: there is one
    done = table.dropna(subset=[BEST])
    # A defaults trial that failed after an epoch has a score, of fewer epochs than the others:
    # no baseline for the gain (README: absent when the defaults' trial did not finish).
    finished = done["status"] == "done" if "status" in done else True
    default = done[done["is_default"] & finished]
    out = {"best_trial": best["trial_id"], "best": float(best[BEST])}
    if not default.empty:
        base = float(default[BEST].iloc[0])
        out.update(default=base, gain=(out["best"] - base) / base if base > 0 else None)
    return out


def failed_trials(table: pd.DataFrame) -> List[str]:
    """The ids of the table's failed trials (status ``error``: Tune kept the error after Ray
    Train's retries), in the table's order. A resume does not run them again; the sweep goes on
    to its winner while one trial reported a checkpoint."""
    if "status" not in table:
        return []
    return [str(trial) for trial in table.loc[table["status"] == "error", "trial_id"]]


def failures_line(table: pd.DataFrame, experiment_dir: str) -> Optional[str]:
    """One line naming the failed trials and where each one's error is; None where none failed."""
    failed = failed_trials(table)
    if not failed:
        return None
    return (
        f"[sweep] {len(failed)} of {_counted(len(table), 'trial')} failed: {', '.join(failed)} "
        f"(each one's error: {experiment_dir}/*<trial id>*/error.txt)"
    )
