"""Ray Train: sharded 2-worker training learns; a crashed worker resumes from its checkpoint with
its optimizer state; checkpoints load without unpickling."""

import os

import pytest
import torch

from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.config import ModelConfig
from ncf.model.directory import save_model_dir
from ncf.rank.recommender import Recommender
from ncf.train.checkpoint import best_checkpoint, export_model_dir, read_optimizer_state
from ncf.train.config import TrainConfig
from ncf.train.trainer import fit
from tests.conftest import SMALL_MODEL


def epochs_metrics(result):
    return sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])


def test_two_workers_with_sharded_tables_reduce_the_loss(small_data, tmp_path):
    data, _ = small_data
    config = TrainConfig(
        data=data,
        model=SMALL_MODEL,
        epochs=3,
        batch_size=8,
        learning_rate=5e-3,
        val_users=30,
        max_steps_per_epoch=6,
        patience=5,
    )
    result = fit(config, num_workers=2, storage_path=str(tmp_path), name="sharded")
    assert result.error is None
    rows = epochs_metrics(result)
    assert [m["epoch"] for m in rows] == [1, 2, 3]
    assert all(m["world_size"] == 2 for m in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    # The gathered (unsharded) weights make a complete model directory that ranks.
    checkpoint, metrics = best_checkpoint(result)
    model_dir = export_model_dir(checkpoint, str(tmp_path / "model"), data, {"training": metrics})
    recommender = Recommender.load(model_dir)
    user = recommender.vocabs.users.raw_of([int(recommender.state.states.users()[0])])[0]
    ranked = recommender.rank([user], k=5)[0]
    assert len(ranked.product_ids) == 5 and not ranked.cold_start


class CrashOnce:
    """Fault drill: rank 0's process dies at the second step of ``epoch``, once (a marker file
    remembers it across the restart)."""

    def __init__(self, marker: str, epoch: int) -> None:
        self.marker, self.epoch = marker, epoch

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        if rank == 0 and epoch == self.epoch and step == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


@pytest.mark.faults
def test_a_crashed_worker_resumes_from_the_last_checkpoint(small_data, tmp_path):
    data, _ = small_data
    marker = str(tmp_path / "crashed")
    config = TrainConfig(
        data=data, model=SMALL_MODEL, epochs=3, batch_size=8, val_users=20, max_steps_per_epoch=4, patience=5
    )
    result = fit(
        config, num_workers=1, storage_path=str(tmp_path), name="crash", max_failures=1, step_hook=CrashOnce(marker, 2)
    )
    assert os.path.exists(marker), "the drill did crash the worker"
    assert result.error is None
    rows = epochs_metrics(result)
    assert [m["epoch"] for m in rows] == [1, 2, 3]  # the same number of epochs, none repeated
    with result.checkpoint.as_directory() as d:
        optimizer = read_optimizer_state(d)
    # The fused tables' row-wise Adagrad state and Adam's moments are in every checkpoint.
    names = " ".join(str(k) for k in optimizer["state"])
    assert "embedding" in names and len(optimizer["state"]) > 4


def test_weights_load_only_without_unpickling(small_data, tmp_path):
    data, _ = small_data
    config = ModelConfig(num_users=10, num_products=10, num_departments=2, num_categories=2, **SMALL_MODEL)
    weights = AdvancedNCF(config).state_dict()
    model_dir = save_model_dir(str(tmp_path / "m"), weights, config, data, trained_through=0, run="validated")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"evil": Payload()}, os.path.join(model_dir, "model.pt"))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        Recommender.load(model_dir)
