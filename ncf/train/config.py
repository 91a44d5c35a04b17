"""Settings of one training run (a Tune trial overrides some of them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ncf.errors import InputError
from ncf.model.config import ModelConfig
from ncf.splits import REFIT, VALIDATED


@dataclass
class TrainConfig:
    """One training run.

    Args:
        data: the preprocessed DATA directory.
        model: ModelConfig fields other than the vocabulary sizes.
        run: ``validated`` (labels end where validation starts; early stopping on validation)
            or ``refit`` (labels through the data's end, a fixed number of epochs).
        epochs: epochs at most (the refit trains exactly this many).
        batch_size: training lists (households at a cutoff) per step.
        learning_rate: Adam's rate for the dense layers; the tables' fused row-wise Adagrad uses
            ``TABLE_LEARNING_RATE_SCALE`` times it (:mod:`ncf.train.sharding`).
        patience: epochs without a better validation NDCG@10 before stopping.
        val_users: households sampled for each epoch's validation ranking (0 = all).
        unknown_share: share of households and of candidates trained on the tables' unknown row
            (so that row learns a generic household / product for ids the tables never saw).
        shuffle_buffer: lists in a local shuffle buffer (0: none; the files are read in a seeded
            random order and hold households in no meaningful order).
        max_steps_per_epoch: 0 = the whole shard; tests use a few steps.
        torch_threads: 0 = this machine's cores shared among the workers (and at most that).
        seed: seeds the weights, the shuffles and each epoch's dropout and unknown-row draws.
    """

    data: str = ""
    model: Dict = field(default_factory=dict)
    run: str = VALIDATED
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    patience: int = 1
    val_users: int = 600
    unknown_share: float = 0.05
    shuffle_buffer: int = 0
    max_steps_per_epoch: int = 0
    torch_threads: int = 0
    seed: int = 0
    cutoffs: List[int] = field(default_factory=list)  # filled from DATA's stats for the run

    def model_config(self, sizes: Dict[str, int]) -> ModelConfig:
        return ModelConfig(**{**self.model, **sizes})


def check_refit_epochs(name: str, saved: Dict, config: TrainConfig) -> None:
    """Refuses (InputError) to resume a refit whose checkpoint (``saved``, its state) trained more
    epochs than ``config`` asks for (the validated run chose fewer this time: trained again on
    other hardware, which rounds otherwise): its weights were exported as the fewer epochs'. The
    driver asks before Ray Train starts (a local run folder), each worker as it resumes (any storage)."""
    epoch = int(saved.get("epoch", 0))
    if config.run == REFIT and epoch > config.epochs:
        raise InputError(
            f"run {name} trained {epoch} epochs, more than the {config.epochs} its validated run chose now: "
            "train it under a new name, or remove that run's folder to train the refit again"
        )
