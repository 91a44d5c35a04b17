"""Ray Train: sharded 2-worker training learns; a crashed worker resumes from its checkpoint."""

import os

import pytest
import torch

from ncf.model.advanced_ncf import ModelConfig
from ncf.model.directory import save_model_dir
from ncf.rank.recommender import Recommender
from ncf.train.loop import TrainConfig, best_checkpoint_weights, fit

SMALL_MODEL = {
    "mf_embedding_dim": 16,
    "mlp_embedding_dim": 16,
    "temporal_dim": 8,
    "mlp_hidden_dims": [32, 16],
    "history_length": 8,
}


def epochs_metrics(result):
    rows = [m for _, m in result.best_checkpoints]
    return sorted(rows, key=lambda m: m["epoch"])


def test_two_workers_with_sharded_tables_reduce_the_loss(small_data, tmp_path):
    data, _ = small_data
    config = TrainConfig(
        data=data,
        model=SMALL_MODEL,
        epochs=3,
        batch_size=256,
        learning_rate=5e-3,
        val_users=30,
        max_steps_per_epoch=25,
        patience=5,
    )
    result = fit(config, num_workers=2, storage_path=str(tmp_path), name="sharded")
    assert result.error is None
    rows = epochs_metrics(result)
    assert [m["epoch"] for m in rows] == [1, 2, 3]
    assert all(m["world_size"] == 2 for m in rows)
    assert rows[0]["sharded_tables"] == 4  # user/product x MF/MLP tables, placed by the planner
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    # The gathered (unsharded) weights make a complete model directory.
    weights, state, metrics = best_checkpoint_weights(result)
    model_dir = save_model_dir(str(tmp_path / "model"), weights, ModelConfig.from_dict(state["model_config"]), data)
    recommender = Recommender.load(model_dir)
    users = recommender.states.users()[:2]
    ranking = recommender.rank_indices(int(users[0]), k=5)
    assert len(ranking.products) == 5 and not ranking.cold_start


@pytest.mark.faults
def test_a_crashed_worker_resumes_from_the_last_checkpoint(small_data, tmp_path):
    data, _ = small_data
    marker = str(tmp_path / "crashed")
    config = TrainConfig(
        data=data,
        model=SMALL_MODEL,
        epochs=3,
        batch_size=256,
        val_users=20,
        max_steps_per_epoch=8,
        patience=5,
        crash_once_at_epoch=2,
        crash_marker=marker,
    )
    result = fit(config, num_workers=1, storage_path=str(tmp_path), name="crash", max_failures=1)
    assert os.path.exists(marker), "the drill did crash the worker"
    assert result.error is None
    rows = epochs_metrics(result)
    assert [m["epoch"] for m in rows] == [1, 2, 3]  # the same number of epochs, none repeated
    assert rows[0]["resumed_from_epoch"] == 0
    assert rows[1]["resumed_from_epoch"] == 1 and rows[2]["resumed_from_epoch"] == 1


def test_weights_load_only_without_unpickling(small_data, tmp_path):
    data, _ = small_data
    config = ModelConfig(num_users=10, num_products=10, num_departments=2, num_categories=2, **SMALL_MODEL)
    from ncf.model.advanced_ncf import AdvancedNCF

    weights = AdvancedNCF(config).state_dict()
    model_dir = save_model_dir(str(tmp_path / "m"), weights, config, data)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"evil": Payload()}, os.path.join(model_dir, "model.pt"))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        Recommender.load(model_dir)
