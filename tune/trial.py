"""One Tune trial: a ``TorchTrainer`` run on one point of the search space.

Ray 2.60 runs Train V2, where a trainer is not a Tune trainable: the trial is a function that
builds and fits the trainer, and Tune's ``TuneReportCallback`` forwards every epoch's metrics
(the best validation NDCG@10 so far, ``best_val_ndcg@10``, for the searcher and the scheduler;
the checkpoint path for the winner's export).
"""

from __future__ import annotations

import dataclasses
from typing import Dict

from ncf.train.config import TrainConfig
from ncf.train.trainer import fit
from tune.search_space import to_train_config
from tune.settings import DATA_DIGESTS, SweepSettings, check_same_data


def base_config(settings: SweepSettings) -> TrainConfig:
    """What every trial shares; the searched point overrides the rest."""
    return TrainConfig(
        data=settings.data,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        val_users=settings.val_users,
        max_steps_per_epoch=settings.max_steps_per_epoch,
        patience=settings.epochs,  # ASHA decides which trials stop early
    )


def train_trial(point: Dict, settings: SweepSettings, cpu_budget: float, torch_threads: int) -> None:
    """Trains ``point`` for up to ``settings.epochs`` epochs, reporting each to Tune.

    The Train run is named after the trial, so a trial restarted by ``--resume`` continues from
    its last epoch's checkpoint instead of starting over. ``cpu_budget``: its workers' CPUs
    together (``ncf.train.trainer.worker_resources``); ``torch_threads``: each worker's.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Each trial reads DATA afresh: one started after DATA was preprocessed again would train on
    # other lists than the trials before it, in one table.
    check_same_data(settings.output, settings.data, settings.recorded(DATA_DIGESTS), running=True)
    config = dataclasses.replace(to_train_config(point, base_config(settings)), torch_threads=torch_threads)
    fit(
        config,
        num_workers=settings.workers,
        use_gpu=settings.use_gpu,
        storage_path=settings.train_dir,
        name=tune.get_context().get_trial_id(),
        callbacks=[TuneReportCallback()],
        cpu_budget=cpu_budget,
    )
