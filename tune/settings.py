"""The settings of one sweep, shared by its driver and every trial."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

from ncf.errors import InputError
from ncf.jsonio import read_json, write_json
from ncf.splits import VALIDATED
from ncf.train.config import TrainConfig

# What a resumed sweep may change: where the sweep directory is reached from (it holds the
# record). The trials at once are Tune's to restore: tune.sweep.started_concurrency checks them.
CHANGEABLE_ON_RESUME = ("concurrent", "output")


@dataclass
class SweepSettings:
    """What a sweep trains on and how much each trial may spend.

    Args:
        data: preprocessed data directory (``jobs.preprocess``), visible to every node.
        output: the sweep directory (``results.parquet``, ``best/``, Tune's and Train's runs).
        trials: points of the search space to try, the defaults first.
        epochs: epochs per trial at most; ASHA stops weak trials after fewer.
        workers: Ray Train workers per trial (>1 shards the embedding tables).
        use_gpu: one GPU per worker.
        concurrent: trials at once (0 = what the cluster fits, leaving CPUs to Ray Data, at most
            ``trials``); the sweep records the count it resolved, and a resume keeps it.
        max_steps_per_epoch: caps an epoch (0 = the whole training split).
        val_users: users in each epoch's validation ranking (0 = all).
        batch_size: training lists (household x cutoff) per step, training's default.
        seed: the Optuna sampler's seed.
        refit: whether the sweep ends by refitting its winner through the data's end (the
            deployment model, SWEEP/refit). Recorded so that a resume without ``--refit`` is
            refused: it would register the validated winner as deployable instead.
    """

    data: str
    output: str
    trials: int = 8
    epochs: int = 2
    workers: int = 1
    use_gpu: bool = False
    concurrent: int = 0
    max_steps_per_epoch: int = 0
    val_users: int = 600
    batch_size: int = TrainConfig.batch_size
    seed: int = 0
    refit: bool = False

    def __post_init__(self) -> None:
        self.data = os.path.abspath(self.data)
        self.output = os.path.abspath(self.output)
        if self.trials < 1 or self.epochs < 1 or self.workers < 1:
            raise InputError("--trials, --epochs and --workers must be >= 1")

    @property
    def settings_path(self) -> str:
        return os.path.join(self.output, "settings.json")

    def record(self) -> None:
        """Writes these settings, what DATA held (:func:`data_digests`) and what the search space
        was (:func:`tune.search_space.space_digest`) into the sweep directory, for ``--resume`` to
        compare against."""
        os.makedirs(self.output, exist_ok=True)
        recorded = {**dataclasses.asdict(self), DATA_DIGESTS: data_digests(self.data), SPACE: _space(self.data)}
        write_json(self.settings_path, recorded)

    def recorded(self, name: str):
        """The setting ``name`` the sweep in :attr:`output` was started with (None: not recorded)."""
        return read_json(self.settings_path).get(name) if os.path.exists(self.settings_path) else None

    def check_resumes(self, skip: Sequence[str] = ()) -> None:
        """Raises InputError when the sweep in :attr:`output` was started with other settings.

        Tune restores its own trial count and trial settings: a sweep resumed with another
        ``--trials`` never reached the count it was asked for (every resume ended "interrupted"),
        and another ``--data`` or ``--epochs`` would mix two budgets in one table. Sweeps started
        before settings were recorded have nothing to compare. ``skip``: settings not compared
        (``use_gpu`` before Ray starts).
        """
        if not os.path.exists(self.settings_path):
            return
        saved, ours = read_json(self.settings_path), dataclasses.asdict(self)
        differ = [
            f"{_flag(name, saved[name])} there, {_flag(name, ours[name])} here"
            for name in ours
            if name in saved and name not in (*CHANGEABLE_ON_RESUME, *skip) and saved[name] != ours[name]
        ]
        if differ:
            raise InputError(
                f"--resume: {self.output} was started with other settings ({'; '.join(differ)}); "
                "resume it with the same ones"
            )
        check_same_data(self.output, self.data, saved.get(DATA_DIGESTS))
        if saved.get(SPACE) is not None and saved[SPACE] != _space(self.data):
            raise InputError(
                f"--resume: {self.output} was started by code with another search space (its dimensions, "
                "choices, ranges, towers or default point differ): Tune would sample its new trials from the old "
                "one; start the sweep again with a new --output (or resume it with the code that started it)"
            )

    @property
    def tune_dir(self) -> str:
        return os.path.join(self.output, "tune")

    @property
    def experiment_dir(self) -> str:
        """Ray Tune's experiment (``tuner.pkl`` and the trials' state, what ``--resume`` restores)."""
        return os.path.join(self.tune_dir, "sweep")

    @property
    def train_dir(self) -> str:
        return os.path.join(self.output, "train")

    @property
    def best_dir(self) -> str:
        return os.path.join(self.output, "best")

    @property
    def refit_dir(self) -> str:
        """The winner refit on labels through the data's end (``--refit``): the deployment model."""
        return os.path.join(self.output, "refit")


DATA_DIGESTS = "data_digests"
SPACE = "search_space_sha256"


def _space(data: str) -> str:
    from tune.search_space import data_limits, space_digest

    return space_digest(data_limits(data))


_DATA_PARTS = {"vocab_sha256": "vocabularies", "lists_sha256": "training lists", "features_version": "features version"}


def data_digests(data: str) -> dict:
    """What the trials train on: DATA's vocabularies, its validated training lists and the
    features version preprocessing wrote them with (digests, not the path: DATA preprocessed
    again in place keeps its path; this code's own version is checked per trial,
    :func:`ncf.train.checkpoint.check_features_of_runs`)."""
    from ncf.data.examples import lists_digest
    from ncf.data.layout import DataStats
    from ncf.model.integrity import vocab_digest

    stats = DataStats(data)
    return {
        "vocab_sha256": vocab_digest(data),
        "lists_sha256": lists_digest(data, stats.cutoffs(VALIDATED)),
        "features_version": stats.features_version,
    }


def check_same_data(output: str, data: str, saved, running: bool = False) -> None:
    """Refuses a resume whose DATA was preprocessed again since the sweep started (``saved``:
    its :func:`data_digests`; None: a sweep started before it was recorded), or, ``running``, a
    sweep's trial or results when it was while the sweep ran (a nightly preprocessing into the
    DATA a sweep of hours reads): the finished trials would be ranked beside trials of other
    lists in one table, and an old winner exported with the new DATA's state."""
    if saved is None:
        return
    current = data_digests(data)
    differ = [_DATA_PARTS[name] for name in current if saved.get(name) != current[name]]
    if differ:
        when = "while the sweep ran" if running else f"since {output} started"
        raise InputError(
            f"{'' if running else '--resume: '}{data} was preprocessed again {when} (its {' and '.join(differ)} "
            "differ): its earlier trials trained on the DATA of then; start the sweep again with a new --output"
        )


def _flag(name: str, value) -> str:
    """A setting as the command line gives it (``use_gpu`` comes from ``--gpu``)."""
    if name == "use_gpu":
        return f"--gpu {'yes' if value else 'no'}"
    if name == "refit":
        return "--refit" if value else "no --refit"
    return f"--{name.replace('_', '-')} {value}"
