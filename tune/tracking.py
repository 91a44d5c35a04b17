"""Each trial of a sweep an MLflow run: Ray Tune's ``MLflowLoggerCallback``, made to keep one run
per trial across ``--resume`` and to log epochs as steps.

A module of its own, imported when a sweep starts: it imports mlflow (about a second), and Tune
pickles the callback into ``tuner.pkl`` by reference to this class, so a resumed sweep runs the
current code (a class built inside a function is pickled with the code it had then).

Example::

    callbacks = [trial_logger("artifacts/sweeps/cj")]  # tune.RunConfig(callbacks=callbacks)
"""

from __future__ import annotations

import os
import re
import time
from typing import Dict, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback

from ncf.errors import without_passwords
from ncf.registry import (
    SWEEP_EXPERIMENT,
    Registry,
    StoreUnavailable,
    StoreUnreachable,
    code_version,
    numeric,
    store_failed,
    tracking_uri,
)

# What Tune adds to each result that is not a metric of the trial.
TUNE_BOOKKEEPING = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "training_iteration",
    "done",
}


# How MLflow's client words a request that got no answer in time (urllib3's read and connect timeouts).
_TIMED_OUT = re.compile(r"timed out|ConnectTimeoutError")
LOOKUP_RETRY_S = 2.0  # a refused lookup of a trial's earlier run is asked again after this


class TrialLogger(MLflowLoggerCallback):
    """Experiment ``ncf-sweeps``: each trial a run tagged with the sweep and its trial id, its
    point as parameters, every epoch's metrics under MLflow-safe names with step = epoch."""

    def setup(self, *args, **kwargs) -> None:
        # The store of the sweep's run as it is now, the one sweep_store() opened before Tune
        # started: a resume restores this callback from tuner.pkl with the store of its first run
        # (another working directory's artifacts/mlflow.db, under `ray job submit --working-dir`).
        self.tracking_uri = self.registry_uri = tracking_uri()
        # And the code that runs now, for the runs it starts: the tags pickled with the first
        # run name its commit.
        self.tags = {**(self.tags or {}), **code_version()}
        super().setup(*args, **kwargs)
        self._ended_trials = set()  # as the runs of super().setup: this Tune run's

    def log_trial_start(self, trial) -> None:
        self.tags = {**self.tags, "trial_id": trial.trial_id}
        if self._store_silent():
            return
        if trial not in self._trial_runs:
            # A trial restarted by --resume keeps the run its first attempt started (this
            # callback's runs are not part of Tune's saved state): one run per trial.
            earlier = self._earlier_run(trial)
            if self._store_silent():
                return
            if earlier is not None:
                self._trial_runs[trial] = earlier
                # It trains on under the code that runs now: its run says so beside the first commit.
                resumed = {f"resumed_{key}": value for key, value in code_version().items()}
                client = self.mlflow_util._get_client()
                for key, value in resumed.items():
                    self._logged("a resumed trial's code", client.set_tag, earlier, key, value)
                # KILLED by on_experiment_end when the sweep was interrupted: running again.
                self._logged("a resumed trial's status", client.update_run, earlier, status="RUNNING")
        self._ended().discard(trial)
        self._logged("a trial's run", super().log_trial_start, trial)

    def log_trial_result(self, iteration: int, trial, result: Dict) -> None:
        step = int(result.get("epoch") or result.get("training_iteration") or iteration)
        metrics = numeric(result, skip=TUNE_BOOKKEEPING)
        if trial in self._trial_runs:  # not when its run could not be started
            run = self._trial_runs[trial]
            self._logged(
                "an epoch's metrics", self.mlflow_util.log_metrics, run_id=run, metrics_to_log=metrics, step=step
            )

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_runs:
            self._ended().add(trial)
            self._logged("a trial's end", super().log_trial_end, trial, failed)

    def on_experiment_end(self, trials, **info) -> None:
        """Ends as KILLED the runs of the trials that did not end on their own: Tune's cleanup
        after Ctrl-C stops the running trials (marking them TERMINATED, as a finished trial is)
        without ``on_trial_complete`` or ``on_trial_error``, so their runs stayed RUNNING. A
        ``--resume`` finds each run again (``log_trial_start``) and sets its final status."""
        ended = self._ended()
        for trial in trials:
            if trial in self._trial_runs and trial not in ended:
                ended.add(trial)
                run = self._trial_runs[trial]
                self._logged("an interrupted trial's end", self.mlflow_util.end_run, status="KILLED", run_id=run)
        super().on_experiment_end(trials=trials, **info)

    def _earlier_run(self, trial) -> Optional[str]:
        """The run a trial's earlier attempt started (None: none, or not found). A store that does
        not answer in time goes silent here as in :meth:`_logged` (the lookup waited out MLflow's
        timeouts first, then the run's start did); one refusing (a server restarting) is asked once
        more before the trial starts a new run, a second one for the trial."""
        refused = None
        for attempt in range(2):
            if attempt:
                time.sleep(LOOKUP_RETRY_S)
            try:
                return Registry(self.tracking_uri).find_trial_run(self.tags["sweep"], trial.trial_id)
            except Exception as e:  # MLflow's own errors vary with the store
                if self._goes_silent(f"trial {trial.trial_id}'s run (looking up its earlier one)", e):
                    return None
                refused = e
        words = without_passwords(str(refused))
        print(f"[registry] trial {trial.trial_id}: its earlier run not looked up ({words})", flush=True)
        return None

    def _ended(self) -> set:
        """The trials whose runs this callback ended in this Tune run (``setup`` starts it empty)."""
        return self.__dict__.setdefault("_ended_trials", set())

    def _store_silent(self) -> bool:
        """Whether the store stopped answering during this Tune run (then nothing more is sent)."""
        return bool(self.__dict__.get("_silent_store"))

    def _logged(self, what: str, call, *args, **kwargs) -> None:
        """``call`` to the tracking store, recording ``what``; a store lost during the sweep costs
        the trials' MLflow records, said on the first failure of each kind, not the sweep (Tune
        calls its callbacks without a guard: one raising here ended every trial). A store that
        does not answer at all is not asked again in this Tune run: each call waited out MLflow's
        timeouts and retries (minutes), holding Tune's loop, per epoch and per trial."""
        if self._store_silent():
            return
        try:
            call(*args, **kwargs)
        except Exception as e:  # MLflow's own errors vary with the store
            if self._goes_silent(what, e):
                return
            said = self.__dict__.setdefault("_store_errors", set())
            if what not in said:
                said.add(what)
                print(f"{self._where()}: {what} not recorded, the sweep goes on ({_first_line(e)})", flush=True)

    def _goes_silent(self, what: str, error: Exception) -> bool:
        """Whether ``error`` is the store not answering in time, which then silences it (said
        once). A silence, not a refusal: a server restarting refuses for seconds (then answers
        again), one wedged holds each call for MLflow's timeouts and retries."""
        # The registry's own calls (the lookup's Registry) raise MLflow's error already worded so.
        failed = error if isinstance(error, StoreUnavailable) else store_failed(self.tracking_uri or "", error)
        unreachable = isinstance(failed, StoreUnreachable)
        if not (unreachable and _TIMED_OUT.search(str(error))):
            return False
        self.__dict__["_silent_store"] = True
        print(
            f"{self._where()}: {what} not recorded, no answer in time ({_first_line(error)}): the sweep goes on, "
            "recording nothing more there until it is resumed",
            flush=True,
        )
        return True

    def _where(self) -> str:
        return f"[registry] tracking store {without_passwords(self.tracking_uri)}"


def _first_line(error: Exception) -> str:
    return without_passwords((str(error).strip().splitlines() or [type(error).__name__])[0])[:300]


def sweep_store() -> Registry:
    """The registry's tracking store (``MLFLOW_TRACKING_URI`` or the local one), opened with the
    sweeps' experiment (created here, its artifacts beside a local store): a store that does not
    open is refused before any trial runs (StoreUnavailable, or InputError), a new sweep or a resumed one."""
    registry = Registry()
    registry.experiment_id(SWEEP_EXPERIMENT)
    return registry


def trial_logger(sweep: str) -> TrialLogger:
    """The sweep's :class:`TrialLogger` on :func:`sweep_store`."""
    sweep_store()
    # No URI here: Tune pickles its callbacks into SWEEP/tune (tuner.pkl), and a store's URI may
    # hold its password; setup() reads the store where the sweep runs.
    return TrialLogger(
        tracking_uri=None,
        registry_uri=None,
        experiment_name=SWEEP_EXPERIMENT,
        tags={"sweep": os.path.abspath(sweep), **code_version()},
    )
