"""ASHA over the epochs each trial reports, never stopping a trial at its last epoch, and
Optuna told each epoch's score at that epoch.

Example::

    scheduler = EpochASHA(last_epoch=4, baseline=default_point(limits))  # rungs at epochs 1, 2, 4
    searcher = EpochOptunaSearch(metric="best_val_ndcg@10", mode="max")
"""

from __future__ import annotations

from typing import Dict, Optional

from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from tune.search_space import is_point

EPOCH = "epoch"  # what the training loop reports with every epoch's metrics, counted from 1


class EpochASHA(ASHAScheduler):
    """Asynchronous successive halving (ASHA) with rungs at 1, 2, 4, ... epochs.

    Its clock is the trial's ``epoch``, not Tune's ``training_iteration``: a trial restarted by
    ``--resume`` continues from its last checkpoint's epoch while Tune counts its iterations
    from 1 again, which compared its later epochs with the other trials' earlier ones.

    A report of the last epoch always continues, even below a rung's cutoff (``last_epoch`` a
    power of 2 is a rung): the trial then ends by itself and its trainer releases its workers'
    placement group, where a trial stopped by Tune relies on Ray Train's cleaner, which a busy
    cluster can leave waiting; and a trial with nothing left to train saves nothing by stopping.
    The report still counts towards the rung's cutoff for the trials after it.

    The trial of ``baseline`` (the default point, which the sweep's gain is measured against)
    always runs every epoch: stopped at a rung, its one epoch was the baseline of a winner's
    several, and the gain was overstated. Its scores count at the rungs up to the one that would
    have stopped it, and not after: a trial ASHA would have stopped must not lower the later
    rungs' cutoffs for the others.
    """

    def __init__(self, last_epoch: int, baseline: Optional[Dict] = None) -> None:
        super().__init__(time_attr=EPOCH, max_t=last_epoch + 1, grace_period=1, reduction_factor=2)
        self.last_epoch = last_epoch
        self.baseline = baseline

    def on_trial_result(self, tune_controller, trial, result: Dict) -> str:
        if trial.trial_id in self._kept_past_a_rung():
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get(EPOCH, 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        # getattr: a scheduler of before, unpickled from a resumed sweep's state, has no baseline.
        baseline = getattr(self, "baseline", None)
        if action == TrialScheduler.STOP and baseline is not None and is_point(getattr(trial, "config", {}), baseline):
            self._kept_past_a_rung().add(trial.trial_id)
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action

    def on_trial_complete(self, tune_controller, trial, result: Dict) -> None:
        if trial.trial_id in self._kept_past_a_rung():
            self._trial_info.pop(trial.trial_id, None)  # its end not recorded at a rung either
            return
        super().on_trial_complete(tune_controller, trial, result)

    def _kept_past_a_rung(self) -> set:
        """The baseline's trial once ASHA would have stopped it (a scheduler unpickled from an older
        sweep's state has no such set yet)."""
        if not hasattr(self, "_baseline_kept"):
            self._baseline_kept = set()
        return self._baseline_kept


class EpochOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` reporting each result to Optuna at the trial's ``epoch``.

    Ray's reports it at Tune's ``training_iteration``, which starts again at 1 for a trial
    restarted by ``--resume`` (as :class:`EpochASHA` says); Optuna keeps the first value of a
    step and ignores the others with a warning, so the resumed epochs' scores were dropped.
    Module-level: Tune pickles the searcher in ``tuner.pkl``, by reference to this class.
    """

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        # Every epoch's report carries its epoch; one without (a final duplicate) keeps Tune's count.
        step = result.get(EPOCH, result.get(TRAINING_ITERATION))
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: int(step)})
