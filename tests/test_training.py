"""Ray Train: sharded 2-worker training learns; a crashed worker resumes from its checkpoint with
its optimizer state; checkpoints load without unpickling."""

import dataclasses
import glob
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import torch
from conftest import SMALL_MODEL
from helpers import readline_within

from ncf.data import layout
from ncf.errors import InputError
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.config import ModelConfig
from ncf.model.directory import ModelDir, save_model_dir
from ncf.rank.recommender import Recommender
from ncf.train.checkpoint import (
    best_checkpoint,
    export_model_dir,
    hardware,
    hardware_changed,
    read_checkpoint,
    read_optimizer_state,
    resumed_checkpoint,
)
from ncf.train.config import TrainConfig
from ncf.train.trainer import fit, training_lists


def epochs_metrics(result):
    return sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])


@pytest.mark.faults
def test_the_refit_trains_for_the_epoch_whose_weights_were_exported():
    """On a tie of validation NDCG@10 the exported checkpoint was the earliest epoch (the first
    maximum of Ray's list, which keeps ties oldest first) but best_epoch the latest: the refit
    and metrics.json named another epoch than the weights."""
    from types import SimpleNamespace

    from ncf.train.trainer import best_epoch

    kept = [("epoch 1", {"val_ndcg@10": 0.40, "epoch": 1})]
    kept += [("epoch 2", {"val_ndcg@10": 0.42, "epoch": 2}), ("epoch 3", {"val_ndcg@10": 0.42, "epoch": 3})]
    result = SimpleNamespace(best_checkpoints=kept, metrics=kept[-1][1], checkpoint="epoch 3")
    assert best_checkpoint(result)[0] == "epoch 2" and best_epoch(result) == 2
    refit = SimpleNamespace(best_checkpoints=[("last", {"epoch": 2})], metrics={"epoch": 2}, checkpoint="last")
    assert best_epoch(refit) == 2
    # A diverged epoch (validation NaN) first in Ray's list, as Ray orders NaN: max kept it, and
    # the diverged weights were exported (a second read, 2026-12-07). Every epoch NaN: said.
    nan = float("nan")
    kept = [("epoch 2", {"val_ndcg@10": nan, "epoch": 2}), ("epoch 1", {"val_ndcg@10": 0.05, "epoch": 1})]
    diverged = SimpleNamespace(best_checkpoints=kept, metrics=kept[0][1], checkpoint="epoch 2")
    assert best_checkpoint(diverged)[0] == "epoch 1" and best_epoch(diverged) == 1
    diverged.best_checkpoints = kept[:1]
    with pytest.raises(InputError, match="validation scored NaN: the training diverged"):  # the job's one line, exit 2
        best_checkpoint(diverged)


@pytest.mark.faults
def test_a_diverged_epochs_score_survives_ray_trains_checkpoint_index():
    """A diverged epoch reported NaN; Ray Train's checkpoint index (pydantic JSON) wrote it as
    null, and a resumed run's next report failed ordering it (1.0 * None: TypeError), on every
    retry (a review of training, 2026-12-07). It reports DIVERGED_SCORE, a number below any NDCG,
    which is never the best epoch, nor a sweep trial's best."""
    import json
    from types import SimpleNamespace

    import pandas as pd
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _TrainingResultState

    from ncf.model.files import DIVERGED_SCORE, VAL_DIVERGED, VAL_METRIC
    from ncf.train.trainer import best_epoch
    from tune.results import BEST, _trial_row
    from tune.search_space import SEARCHED

    reported = {VAL_METRIC: DIVERGED_SCORE, VAL_DIVERGED: 1.0, "epoch": 2}
    indexed = json.loads(_TrainingResultState(checkpoint_dir_name="epoch 2", metrics=reported).json())
    assert indexed["metrics"][VAL_METRIC] == DIVERGED_SCORE  # NaN came back None
    nan_indexed = json.loads(_TrainingResultState(checkpoint_dir_name="x", metrics={VAL_METRIC: float("nan")}).json())
    assert nan_indexed["metrics"][VAL_METRIC] is None  # what Ray does with a NaN: why no NaN is reported
    kept = [("epoch 1", {VAL_METRIC: 0.05, "epoch": 1}), ("epoch 2", indexed["metrics"])]
    result = SimpleNamespace(best_checkpoints=kept, metrics=kept[1][1], checkpoint="epoch 2")
    assert best_checkpoint(result)[0] == "epoch 1" and best_epoch(result) == 1
    result.best_checkpoints = kept[1:]
    with pytest.raises(InputError, match="the training diverged"):
        best_checkpoint(result)
    # A sweep's trial whose every epoch diverged: no best, its epochs counted (the winner says so).
    history = pd.DataFrame([{**reported, "epoch": 1}, reported])
    point = {name: 1 for name in SEARCHED}
    trial = SimpleNamespace(config=point, error=None, metrics_dataframe=history, metrics={"trial_id": "t"}, path="p")
    row = _trial_row(trial, point)
    assert np.isnan(row[BEST]) and row["epochs"] == 2 and row["checkpoint_path"] is None
    # Nor a figure where curves and trackers record the epochs (MLflow's run, the report's table).
    from ncf.evaluate.report import _training_section
    from ncf.registry import numeric

    assert "val_ndcg_at_10" not in numeric(reported) and numeric(reported)["val_diverged"] == 1.0
    assert numeric({VAL_METRIC: 0.3, "epoch": 1})["val_ndcg_at_10"] == 0.3
    # The best so far of a run whose every epoch diverged is the placeholder too (a review of
    # tune/, session 67: MLflow logged best_val_ndcg_at_10 -1.0 at each such epoch).
    from ncf.model.files import BEST_VAL_METRIC

    assert "best_val_ndcg_at_10" not in numeric({**reported, BEST_VAL_METRIC: DIVERGED_SCORE})
    assert numeric({**reported, BEST_VAL_METRIC: 0.05})["best_val_ndcg_at_10"] == 0.05
    section = _training_section([{"epoch": 1, "train_loss": 0.5, VAL_METRIC: 0.3}, {**reported, "train_loss": 9.0}], 1)
    assert "-1.0000" not in section and "0.3000" in section


@pytest.mark.faults
def test_a_refit_trained_past_the_epochs_its_validated_run_chose_now_is_not_resumed():
    """A refit of 3 epochs whose export failed, resumed after its validated run was trained again
    (other hardware rounds otherwise) and chose 2: the 3-epoch weights were exported as 2 epochs'
    (a review of training, 2026-12-07). Refused in one line; fewer epochs resume."""
    import dataclasses

    from ncf.errors import InputError
    from ncf.train.config import check_refit_epochs
    from ncf.train.trainer import refit_config

    validated = TrainConfig(data="DATA", epochs=5)
    with pytest.raises(InputError, match="run X-refit trained 3 epochs, more than the 2 its validated run chose now"):
        check_refit_epochs("X-refit", {"epoch": 3}, refit_config(validated, 2))
    check_refit_epochs("X-refit", {"epoch": 2}, refit_config(validated, 3))
    check_refit_epochs("X", {"epoch": 3}, dataclasses.replace(validated, epochs=2))  # a validated run's: stopped_early


def test_a_run_of_several_workers_records_the_rows_its_batches_read():
    """With --workers N each epoch's lists are dealt out in N equal shares, up to N-1 left out, the
    same each epoch; an uncapped run recorded no rows read, so households and products only those
    lists held kept their random vectors and were exported as trained (a review of training,
    2026-12-07). Capped and multi-worker runs record them; one uncapped worker reads every list."""
    from ncf.train.loop import marks_read_rows

    uncapped, capped = TrainConfig(data="D"), TrainConfig(data="D", max_steps_per_epoch=3)
    assert marks_read_rows(uncapped, world_size=2) and marks_read_rows(capped, world_size=1)
    assert not marks_read_rows(uncapped, world_size=1)


def test_two_workers_with_sharded_tables_reduce_the_loss(small_data, tmp_path):
    data, stats = small_data
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
    assert result.error is None, result.error
    rows = epochs_metrics(result)
    assert [m["epoch"] for m in rows] == [1, 2, 3], rows
    assert all(m["world_size"] == 2 for m in rows), rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], rows

    # The gathered (unsharded) weights make a complete model directory that ranks.
    checkpoint, metrics = best_checkpoint(result)
    model_dir = export_model_dir(checkpoint, str(tmp_path / "model"), data, {"training": metrics})
    recommender = Recommender.load(model_dir)
    user = recommender.vocabs.users.raw_of([int(recommender.state.states.users()[0])])[0]
    ranked = recommender.rank([user], k=5)[0]
    assert len(ranked.product_ids) == 5 and not ranked.cold_start
    # No list holds an id unknown at its cutoff: ids first seen after the last one were never trained.
    handle = ModelDir(model_dir)
    assert handle.rows_trained_before == max(stats["cutoffs"]["validated"]) < handle.trained_through
    first_seen = recommender.vocabs.products.column("first_ts")
    rows = recommender.ranker.rows
    assert (rows.product[first_seen >= handle.rows_trained_before] == 0).all()
    # Nor were the rows that no batch held: the epochs were capped, so the lists after the cap
    # were not read (the masks were every list's household, read or not, before 2026-12-05).
    users, products = handle.trained_rows
    listed = pa.concat_tables(
        pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=["user"])
        for c in stats["cutoffs"]["validated"]
    )
    trained, in_lists = set(np.flatnonzero(users[1:]) + 1), set(listed.column("user").to_pylist())
    lists_read = 2 * 6 * 8 * 3  # workers x steps x lists a batch x epochs, at most
    assert trained and trained <= in_lists and len(trained) <= lists_read and len(trained) < len(in_lists)
    assert (rows.user[~users] == 0).all() and (rows.user[1:][users[1:]] > 0).all()
    known = products[1:] & (first_seen[1:] < handle.rows_trained_before)
    assert (rows.product[~products] == 0).all() and (rows.product[1:][known] > 0).all()


def test_each_rank_initialises_its_shards_from_a_seed_of_its_own():
    """With one seed for all ranks, tables of one shape held by two ranks started equal: after an
    epoch of 2 workers on the small data, user_mf and user_mlp correlated 0.94 (0.015 since). Rank
    0 keeps the run's seed, so a one-worker run initialises as it did."""
    from ncf.train.loop import init_seed

    seeds = [init_seed(7, rank) for rank in range(64)]
    assert seeds[0] == 7 and len(set(seeds)) == 64
    assert init_seed(8, 1) != init_seed(7, 1)
    first_rows = []
    for seed in seeds[:2]:
        torch.manual_seed(seed)
        first_rows.append(torch.rand(16))
    assert not torch.equal(*first_rows)


def test_the_training_order_follows_the_lists_and_the_seed_not_how_the_files_were_written(small_data, tmp_path):
    """Old code shuffled the blocks of Ray Data's Parquet read, which packs the files' row groups
    into read tasks first fit: two preprocessings of the same logs (the same lists, other row
    groups) trained seed 0 to 0.4228 and 0.4169 on Complete Journey. Now: the cutoffs oldest
    first, each cutoff's files in the seed's order, whatever their row groups."""
    from ray.data import DataContext

    data, stats = small_data
    cutoffs = sorted(stats["cutoffs"]["validated"])
    assert len(cutoffs) >= 2
    tables = [pads.dataset(layout.examples_dir(data, c), format="parquet").to_table() for c in cutoffs]
    copies = []
    for name, row_group_size in (("small-groups", 3), ("one-group", 100_000)):
        directories = []
        for c, table in zip(cutoffs, tables):
            directory = tmp_path / name / f"cutoff={c}"
            directory.mkdir(parents=True)
            third = -(-table.num_rows // 3)
            for i in range(3):  # the same rows in three files, under other names and row groups
                part = table.slice(i * third, third)
                pq.write_table(part, directory / f"{name}-{i}.parquet", row_group_size=row_group_size)
            directories.append(str(directory))
        copies.append(directories)

    def read_order(directories, seed):
        context = DataContext.get_current()
        kept, context.execution_options.preserve_order = context.execution_options.preserve_order, True
        try:
            batches = training_lists(directories, seed).iter_batches(batch_size=4, batch_format="numpy")
            return [(int(u), tuple(p.tolist())) for b in batches for u, p in zip(b["user"], b["product"])]
        finally:
            context.execution_options.preserve_order = kept

    def expected(seed):
        files = sorted(f for d in copies[0] for f in glob.glob(os.path.join(d, "*.parquet")))
        shuffled = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        ordered = sorted(shuffled, key=lambda f: cutoffs.index(int(os.path.dirname(f).rsplit("=", 1)[1])))
        parts = [pq.read_table(f) for f in ordered]
        return [(u, tuple(p)) for t in parts for u, p in zip(t["user"].to_pylist(), t["product"].to_pylist())]

    assert read_order(copies[0], 0) == read_order(copies[1], 0) == expected(0)
    assert read_order(copies[0], 1) == expected(1) != expected(0)  # the seed orders each cutoff's files
    users_by_cutoff = [set(t["user"].to_pylist()) for t in tables]
    first, last = read_order(copies[0], 1)[0][0], read_order(copies[0], 1)[-1][0]
    assert first in users_by_cutoff[0] and last in users_by_cutoff[-1]


# The drill's hook travels to the training worker by value: the worker cannot import test modules.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


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
def test_a_crashed_worker_resumes_to_the_weights_of_an_uninterrupted_run(small_data, tmp_path):
    """Rank 0 dies in epoch 2; Ray Train restarts it from the epoch-1 checkpoint, and the run ends
    with the weights of a run that never crashed. Three old bugs fail here: Ray Data handing blocks
    over as their reads finished (two runs of one seed trained on other batches, 0.003 apart on
    Complete Journey), the restarted worker seeding its dropout and unknown-row draws again from
    the run's seed (the resumed epoch repeated epoch 1's draws), and a resume without the
    optimizers' state."""
    data, _ = small_data
    config = TrainConfig(
        data=data, model=SMALL_MODEL, epochs=2, batch_size=8, val_users=10, max_steps_per_epoch=4, patience=5
    )
    marker = str(tmp_path / "crashed")
    runs = {
        "whole": fit(config, storage_path=str(tmp_path), name="whole", max_failures=0),
        "resumed": fit(
            config, storage_path=str(tmp_path), name="resumed", max_failures=1, step_hook=CrashOnce(marker, 2)
        ),
    }
    assert os.path.exists(marker), "the drill did crash the worker"
    weights = {}
    for name, result in runs.items():
        assert result.error is None, result.error
        assert [m["epoch"] for m in epochs_metrics(result)] == [1, 2]  # none repeated or skipped
        with result.checkpoint.as_directory() as d:
            weights[name] = read_checkpoint(d)[0]
            optimizer = read_optimizer_state(d)
        # The fused tables' row-wise Adagrad state and Adam's moments are in every checkpoint.
        names = " ".join(str(k) for k in optimizer["state"])
        assert "embedding" in names and len(optimizer["state"]) > 4
    assert weights["whole"].keys() == weights["resumed"].keys()
    different = [k for k in weights["whole"] if not torch.equal(weights["whole"][k], weights["resumed"][k])]
    assert not different, different


@pytest.mark.faults
def test_a_run_name_reused_for_another_model_configuration_is_refused_before_training(small_data, tmp_path, capsys):
    data, _ = small_data
    settings = dict(data=data, epochs=1, batch_size=8, val_users=10, max_steps_per_epoch=2, patience=5)
    first = fit(TrainConfig(model=SMALL_MODEL, **settings), storage_path=str(tmp_path), name="reused", max_failures=0)
    assert first.error is None, first.error
    assert f"[train] starting run reused (checkpoints in {tmp_path / 'reused'})" in capsys.readouterr().out
    wider = {**SMALL_MODEL, "mlp_hidden_dims": [48, 16]}
    # Ray Train would resume the reused name's run: the first model's tables and layers loaded
    # into another shape of model. Refused in the driver, in one line, before Ray Train starts.
    with pytest.raises(InputError) as refused:
        fit(TrainConfig(model=wider, **settings), storage_path=str(tmp_path), name="reused", max_failures=0)
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "reused") in message, message
    assert "mlp_hidden_dims: [32, 16] there, [48, 16] here" in message, message
    # The same configuration resumes.
    again = fit(TrainConfig(model=SMALL_MODEL, **{**settings, "epochs": 2}), storage_path=str(tmp_path), name="reused")
    assert again.error is None, again.error
    assert [m["epoch"] for m in epochs_metrics(again)][-1] == 2
    out = capsys.readouterr().out
    assert f"[train] resuming run reused after epoch 1 ({tmp_path / 'reused'})" in out
    assert "resumes on" not in out  # the hardware the checkpoint recorded is this one
    # Resumed after its last epoch (a sweep's Ctrl-C between that epoch's checkpoint and its report
    # reaching Tune): it reported nothing, and Tune failed the trial for a result without its metric.
    from ray.train import UserCallback

    class Reports(UserCallback):  # on Ray Train's controller, as Tune's TuneReportCallback is
        def after_report(self, run_context, metrics, checkpoint):
            with open(tmp_path / "reports.jsonl", "a") as f:
                f.write(json.dumps({"epoch": metrics[0].get("epoch"), "checkpoint": checkpoint is not None}) + "\n")

    done = fit(
        TrainConfig(model=SMALL_MODEL, **{**settings, "epochs": 2}),
        storage_path=str(tmp_path),
        name="reused",
        callbacks=[Reports()],
    )
    assert done.error is None and done.metrics["best_val_ndcg@10"] == again.metrics["best_val_ndcg@10"], done.error
    reported = [json.loads(line) for line in open(tmp_path / "reports.jsonl")]
    assert reported == [{"epoch": 2, "checkpoint": True}]
    # Other workers or a GPU are said, not refused (a run may move to GPUs that came free).
    moved = hardware_changed(resumed_checkpoint(str(tmp_path / "reused"))[1]["hardware"], hardware(2, True))
    assert moved.startswith("trained on 1 worker(s) on CPU so far and resumes on 2 worker(s) on GPU"), moved
    # Other training settings (here the learning rate) would make one model of two trainings.
    slower = TrainConfig(model=SMALL_MODEL, **{**settings, "epochs": 3, "learning_rate": 1e-3})
    with pytest.raises(InputError, match=r"trained with other settings \(learning_rate: 0.002 there, 0.001 here\)"):
        fit(slower, storage_path=str(tmp_path), name="reused")
    # DATA preprocessed again since (its vocabularies renumbered): refused the same way, not three
    # workers failing one after the other.
    from ncf.jsonio import read_json, write_json
    from ncf.train.checkpoint import TRAIN_STATE

    latest = os.path.join(resumed_checkpoint(str(tmp_path / "reused"))[0], TRAIN_STATE)
    write_json(latest, {**read_json(latest), "vocab_sha256": "0" * 64})
    with pytest.raises(InputError, match="trained on other vocabularies than --data holds now"):
        fit(TrainConfig(model=SMALL_MODEL, **{**settings, "epochs": 3}), storage_path=str(tmp_path), name="reused")


@pytest.mark.faults
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


def _join_group(store: str, rank: int, world_size: int) -> None:
    """A gloo process group over a file store, not a TCP port: a free port chosen by the test could
    be taken before rank 0 binds it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)


def _sharded_state_round_trip(rank: int, world_size: int, store: str, path: str) -> None:
    import torch.distributed as dist

    from ncf.model import example_batch
    from ncf.train.sharding import build_model, full_optimizer_state, load_optimizer_state

    _join_group(store, rank, world_size)
    config = ModelConfig(num_users=40, num_products=120, num_departments=3, num_categories=6, **SMALL_MODEL)
    model, optimizer = build_model(config, torch.device("cpu"), 1e-2)
    for step in range(3):  # the fused row-wise Adagrad and Adam gather state
        batch = example_batch(config, 4, 6, seed=10 * rank + step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch, return_logits=True), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    saved = full_optimizer_state(optimizer)
    if rank == 0:
        torch.save(saved, path + ".saved")
    dist.barrier()
    # A fresh worker group after the crash: build again, restore, gather what it now holds.
    _, restored_optimizer = build_model(config, torch.device("cpu"), 1e-2)
    load_optimizer_state(restored_optimizer, torch.load(path + ".saved", weights_only=True))
    restored = full_optimizer_state(restored_optimizer)
    if rank == 0:
        torch.save(restored, path + ".restored")
    # Both ranks done before either tears its group down: once (session 62's suite, 1 run of about
    # 10), rank 1 aborted in gloo's teardown ("terminate called without an active exception")
    # while rank 0 still wrote its file.
    dist.barrier()
    dist.destroy_process_group()


def _full_weights_of_a_trained_group(rank: int, world_size: int, store: str, path: str, own_group: bool) -> None:
    import torch.distributed as dist

    from ncf.model import example_batch
    from ncf.train import sharding
    from ncf.train.sharding import build_model, full_state_dict

    _join_group(store, rank, world_size)
    if own_group:  # as under NCCL: the tables travel through a gloo group of their own
        group = dist.new_group(backend="gloo")
        sharding._cpu_group = lambda: group
    torch.manual_seed(rank)
    config = ModelConfig(num_users=40, num_products=120, num_departments=3, num_categories=6, **SMALL_MODEL)
    model, optimizer = build_model(config, torch.device("cpu"), 1e-2)
    for step in range(2):
        batch = example_batch(config, 4, 6, seed=10 * rank + step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch, return_logits=True), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch = example_batch(config, 4, 6, seed=99)
    with torch.no_grad():
        logits = model(batch, return_logits=True)
    weights = full_state_dict(model)
    if rank == 0:
        torch.save({"weights": weights, "logits": logits, "batch": batch.__dict__}, path)
    dist.destroy_process_group()


@pytest.mark.parametrize("world_size, own_group", [(1, False), (2, False), (2, True)])
def test_the_full_weights_rank_as_the_sharded_model_did(tmp_path, world_size, own_group):
    """What a checkpoint and the epoch's validation read (one CPU worker's tables taken as they
    are, several workers' gathered shard by shard, through the default group or, as under NCCL,
    a gloo group of their own), saved and loaded into a plain model, gives the sharded model's
    logits."""
    from ncf.model.batch import Batch

    path = str(tmp_path / "full")
    args = (world_size, str(tmp_path / "store"), path, own_group)
    torch.multiprocessing.spawn(_full_weights_of_a_trained_group, args=args, nprocs=world_size, join=True)
    saved = torch.load(path, weights_only=True)
    config = ModelConfig(num_users=40, num_products=120, num_departments=3, num_categories=6, **SMALL_MODEL)
    plain = AdvancedNCF(config)
    assert set(saved["weights"]) == set(plain.state_dict())
    plain.load_state_dict(saved["weights"])
    with torch.no_grad():
        logits = plain.eval()(Batch(**saved["batch"]), return_logits=True)
    torch.testing.assert_close(logits, saved["logits"])


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}/{key}")


@pytest.mark.faults
def test_sharded_resume_restores_the_fused_and_dense_optimizer_state(tmp_path):
    """Two workers with sharded tables: the optimizer state a checkpoint saves (row-wise
    Adagrad of every table shard, Adam of the dense layers) is what a restarted group holds."""
    path = str(tmp_path / "optimizer")
    torch.multiprocessing.spawn(_sharded_state_round_trip, args=(2, str(tmp_path / "store"), path), nprocs=2, join=True)
    saved = dict(_tensors(torch.load(path + ".saved", weights_only=True)))
    restored = dict(_tensors(torch.load(path + ".restored", weights_only=True)))
    assert saved.keys() == restored.keys()
    assert any("embedding" in key and "momentum" in key for key in saved), sorted(saved)[:10]
    assert any("exp_avg" in key for key in saved)
    for key in saved:
        torch.testing.assert_close(restored[key], saved[key], msg=key)
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "embedding" in key)


def _sum_of_two_ranks(rank: int, world_size: int, store: str, path: str) -> None:
    import torch.distributed as dist

    from ncf.train.sharding import summed_across_ranks

    _join_group(store, rank, world_size)
    # Rank 1 trained more candidates at another loss: the epoch's figures are both ranks'.
    totals = summed_across_ranks([0.5 + rank, 3, 100 * (rank + 1)])
    torch.save(torch.tensor(totals), f"{path}.{rank}")
    dist.destroy_process_group()


def test_epoch_figures_add_every_ranks_share(tmp_path):
    """train_loss was rank 0's and examples_per_s rank 0's rate times the world size."""
    from ncf.train.sharding import summed_across_ranks

    assert summed_across_ranks([1.5, 2]) == [1.5, 2.0]  # without a process group: as they are
    path = str(tmp_path / "totals")
    torch.multiprocessing.spawn(_sum_of_two_ranks, args=(2, str(tmp_path / "store"), path), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(f"{path}.{rank}").tolist() == [2.0, 6.0, 300.0]


HOLD_THE_SLOT = """
import sys, ray
ray.init()
from ncf.train.slot import training_slot
with training_slot("jobs.train held-elsewhere"):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.faults
def test_ctrl_c_while_the_slot_is_given_back_leaves_the_jobs_outcome_as_it_was(ray_session, monkeypatch, capsys):
    """A Ctrl-C while a training job gave its slot back (up to 30 s of waiting for the name)
    replaced the job's outcome: a model exported and registered then read "nothing was trained"
    (a review of jobs/, 2026-12-06). The release says it in a line; the outcome stands."""
    from ncf import slot
    from ncf.train.slot import SLOT_NAME, training_slot

    wait_released = slot._wait_released

    def interrupted(name, timeout_s=30.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(slot, "_wait_released", interrupted)
    try:
        with training_slot("jobs.train interrupted at its end") as held:
            outcome = "exported and registered"
    except KeyboardInterrupt:  # raised out of the test, it would stop pytest
        pytest.fail("the release's Ctrl-C replaced the block's outcome")
    # Told to the job: a foreground deploy stops rather than serve on (a second read, 2026-12-06).
    assert outcome == "exported and registered" and held.interrupted_at_release
    assert capsys.readouterr().err == (
        f"[slot] the slot {SLOT_NAME} was not released (KeyboardInterrupt); it goes when this job ends\n"
    )
    wait_released(SLOT_NAME)  # killed all the same: free for the next test


@pytest.mark.faults
def test_workers_beside_serves_replicas_leave_room_for_the_reads_that_feed_them(ray_session, capsys):
    """jobs.train sized its workers from all of the cluster's CPUs: beside two Serve replicas of
    0.5 CPU on 2 CPUs its worker took the last one, and Ray Data's reads never started, the run
    hung without a word (a review of training, 2026-12-07; a sweep's trials had the same hang).
    Where the worker would take the last free CPUs, it takes less, and a read fits; where the free
    CPUs hold neither, the run waits (an autoscaler adds a node) and says so."""
    import ray

    from ncf.train.trainer import READ_CPU, worker_resources

    @ray.remote(num_cpus=0.5)
    class Replica:
        def ready(self) -> bool:
            return True

    replicas = [Replica.remote() for _ in range(2)]
    try:
        ray.get([r.ready.remote() for r in replicas])
        free = ray.available_resources().get("CPU", 0.0)
        asked = worker_resources(1, use_gpu=False)["CPU"]
        assert asked + READ_CPU <= free and asked == 0.75, (asked, free)  # before: 1.0 of the 1.0 free
        assert "the run waits for them" not in capsys.readouterr().err
        more = Replica.remote()  # 0.5 CPU left of 2.0: the whole worker waits, and says so
        replicas.append(more)
        ray.get(more.ready.remote())
        assert worker_resources(1, use_gpu=False)["CPU"] == 1.0  # an autoscaler would add a node for it
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("[train] 0.5 of the cluster's 2 CPUs are free, 1.25 wanted"), line
    finally:
        for replica in replicas:
            ray.kill(replica)


@pytest.mark.faults
def test_a_slot_whose_actor_dies_at_its_start_is_a_one_line_try_later(ray_session, monkeypatch):
    """A slot actor that died before it answered (its node lost, out of memory) came out as a
    RayActorError traceback (a review of ncf/slot.py, 2026-12-06). Now: one line, exit 75, and
    the name is free for the next run."""
    import ray

    from ncf.errors import TryLater
    from ncf.train.slot import SLOT_NAME, training_slot

    real_get = ray.get

    def died(*args, **kwargs):
        monkeypatch.setattr(ray, "get", real_get)  # once: the release's own calls go through
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(ray, "get", died)
    with pytest.raises(TryLater, match=rf"the actor of the slot {SLOT_NAME} died before it answered \(The actor died"):
        with training_slot("jobs.train on a dying node"):
            pytest.fail("the block ran without its slot")
    with training_slot("jobs.train right after"):  # the dead one's name was let go
        pass


@pytest.mark.faults
def test_a_second_training_job_on_the_cluster_is_refused_and_a_dead_ones_slot_is_freed(ray_session):
    """Two training jobs at once took each other's CPUs kept for Ray Data's reads and both
    waited. Now the second is refused in one line naming the first (exit 75: try later), and a
    job killed while it trains leaves the slot free (Ray removes an actor whose owner died)."""
    import signal
    import subprocess
    import time

    from helpers import REPO

    from ncf.staging import Busy
    from ncf.train.slot import training_slot

    with training_slot("jobs.train first"):
        with pytest.raises(Busy, match=r"another training job runs on this cluster \(jobs.train first\)"):
            with training_slot("jobs.train second"):
                pass
    with training_slot("jobs.train right after"):  # released when the first ended, not some time later
        pass
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_SLOT],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert readline_within(holder.stdout).strip() == "held"
        with pytest.raises(Busy, match=r"\(jobs.train held-elsewhere\)"):
            with training_slot("jobs.train here"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    deadline = time.monotonic() + 60
    while True:  # bounded: Ray notices the dead driver within seconds
        try:
            with training_slot("jobs.train after the kill"):
                break
        except Busy:
            assert time.monotonic() < deadline, "a killed job's slot was never freed"
            time.sleep(0.5)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_capped_run_marks_the_rows_its_batch_trains_after_the_unknown_row_swap(small_data, share):
    """A household or candidate swapped for the unknown row in its batch trains row 0, not its
    own: marked before the swap (before 2026-12-05), a capped run called such rows trained."""
    from types import SimpleNamespace

    from ncf.data.features import Catalog
    from ncf.data.vocab import Vocabularies
    from ncf.train.loop import training_batch

    data, stats = small_data
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    table = pads.dataset(layout.examples_dir(data, stats["cutoffs"]["validated"][-1]), format="parquet").head(8)
    marks = (np.zeros(len(vocabs.users), bool), np.zeros(len(vocabs.products), bool))
    worker = SimpleNamespace(
        cfg=SimpleNamespace(unknown_share=share),
        catalog=Catalog.of(vocabs.products),
        model_config=SimpleNamespace(history_length=4),
        read_rows=marks,
    )
    batch = training_batch(worker, table, torch.Generator().manual_seed(0))
    history = set(np.unique(batch.history.numpy()).tolist())
    users, products = (set(np.flatnonzero(m).tolist()) for m in marks)
    if share == 1.0:
        assert (batch.user == 0).all() and (batch.product == 0).all()
        assert users == {0} and products == {0} | history
    else:
        assert users == set(table.column("user").to_pylist()) and 0 not in users
        candidates = {p for row in table.column("product").to_pylist() for p in row}
        assert products == candidates | history and len(candidates - history) > 0


def test_worker_threads_count_the_cpus_the_process_may_run_on(monkeypatch):
    """os.cpu_count() is the host's: a 4-CPU pod on a 64-core host ran 64 threads per worker."""
    from ncf.train.loop import worker_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert worker_threads(TrainConfig(), 2) == 2 and worker_threads(TrainConfig(), 8) == 1
    assert worker_threads(TrainConfig(), 1, node_cpus=2.0) == 2  # Ray's count of the node (a cgroup quota)
    assert worker_threads(TrainConfig(torch_threads=3), 1) == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS: the machine's count
    assert worker_threads(TrainConfig(), 2) == 32


@pytest.mark.parametrize("world_size", [1, 2])
def test_several_workers_validate_on_the_cpu_beside_their_gpu_shards(monkeypatch, world_size):
    """Rank 0 built a whole unsharded copy of the model on its GPU, beside its shard of the
    tables: with several workers it ranks the validation households on the CPU."""
    from types import SimpleNamespace

    from ncf.train import loop

    class Built(Exception):
        pass

    def model_from_weights(config, weights, device):
        raise Built(device)

    monkeypatch.setattr(loop, "model_from_weights", model_from_weights)
    gpu = torch.device("cuda", 0)
    worker = SimpleNamespace(validation=(None, None, None), model_config=None, device=gpu, world_size=world_size)
    worker.said_validation_on_cpu = False
    weights = {"table": torch.zeros(1000, 25)}  # 100,000 bytes
    emptied = []  # the allocator's cache of training's activations given back before free memory is read
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    for free, expected in ((121_000, gpu), (119_000, torch.device("cpu"))):
        # One worker: a second, whole copy on its GPU only where its free memory holds it (a review
        # of ncf/train, 2026-12-07: tables the planner let fill 85% of it ran it out of memory).
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10**9))
        with pytest.raises(Built) as built:
            loop.validate(worker, weights)
        assert built.value.args[0] == (expected if world_size == 1 else torch.device("cpu"))
    assert worker.said_validation_on_cpu == (world_size == 1)  # the move to the CPU is said (once)
    assert len(emptied) == (2 if world_size == 1 else 0)


@pytest.mark.faults
def test_a_refit_reports_no_best_validation_score(small_data, tmp_path):
    """A refit does not validate: its best_val_ndcg@10 was the placeholder -1.0, reported to Ray
    Train (and so MLflow, TensorBoard and metrics.json's history) as if it were a score."""
    from ncf.train.checkpoint import run_history
    from ncf.train.trainer import refit_config

    data, _ = small_data
    validated = TrainConfig(data=data, model=SMALL_MODEL, batch_size=8, max_steps_per_epoch=2)
    result = fit(refit_config(validated, 1), storage_path=str(tmp_path), name="refit")
    assert result.error is None, result.error
    history = run_history(result)
    assert [row["epoch"] for row in history] == [1] and result.metrics["epoch"] == 1
    assert (history[0]["steps"], history[0]["lists"]) == (2, 16), history  # two full batches of 8 lists
    assert not [k for row in [result.metrics, *history] for k in row if k.startswith("best_")], history
    # A refit that trained more epochs than its validated run chose now, under a storage URI the
    # driver cannot read (s3://; file:// here): the workers resumed it and the job exported the
    # longer model as the shorter one's (a review of ncf/train, 2026-12-07). Each worker refuses it.
    from ncf.jsonio import read_json, write_json
    from ncf.train.checkpoint import TRAIN_STATE
    from ncf.train.trainer import training_failure

    latest = os.path.join(resumed_checkpoint(str(tmp_path / "refit"))[0], TRAIN_STATE)
    write_json(latest, {**read_json(latest), "epoch": 3})
    with pytest.raises(Exception) as failed:  # Ray Train's WorkerGroupError, as jobs.train sees it
        fit(refit_config(validated, 1), storage_path=f"file://{tmp_path}", name="refit", max_failures=0)
    refused = training_failure(failed.value)
    assert isinstance(refused, InputError), failed.value
    assert "run refit trained 3 epochs, more than the 1 its validated run chose now" in str(refused)


@pytest.mark.faults
def test_a_run_whose_loss_is_no_longer_a_number_stops_at_that_epoch(small_data, tmp_path, capsys):
    """One step whose loss is NaN makes every weight NaN for good: a validated run trained
    ``--patience`` more epochs and validated each, and a refit trained all its epochs, then failed
    at the export, after the validated model's (a review of ncf/train, 2026-12-08)."""
    import dataclasses

    from ncf.model.files import VAL_DIVERGED
    from ncf.train.checkpoint import run_history
    from ncf.train.loop import LOSS_DIVERGED
    from ncf.train.trainer import refit_config

    data, _ = small_data
    # Steps of 1e30 make the weights overflow float32 at the next step.
    validated = TrainConfig(
        data=data, model=SMALL_MODEL, batch_size=8, max_steps_per_epoch=3, epochs=3, patience=3, learning_rate=1e30
    )
    result = fit(validated, storage_path=str(tmp_path), name="validated", max_failures=0)
    assert result.error is None, result.error
    history = run_history(result)
    assert [row["epoch"] for row in history] == [1], history
    assert history[0][LOSS_DIVERGED] == 1.0 and history[0][VAL_DIVERGED] == 1.0, history
    # Resumed with a higher --patience (a second read, 2026-12-08: the line said "raise --patience
    # to continue", which trained NaN weights again): said, nothing trained.
    resumed = fit(dataclasses.replace(validated, patience=5), storage_path=str(tmp_path), name="validated")
    assert [row["epoch"] for row in run_history(resumed)] == [1]
    assert "run validated diverged in epoch 1 (its loss was not a number): nothing more is trained" in (
        capsys.readouterr().out
    )
    # A refit fails in one line, from fit itself: raised in its workers, Ray Train trained the
    # same diverging epoch twice more first (its retries).
    with pytest.raises(InputError, match=r"^the refit run diverged in epoch 1 \(its loss is not a number at learning"):
        fit(refit_config(validated, 2), storage_path=str(tmp_path), name="refit")


def test_a_diverged_runs_resume_says_what_is_kept_whichever_code_wrote_its_checkpoint():
    """The diverged epoch is read from the state's record, or from the history's flag (checkpoints
    of the first version, which recorded no epoch: resumed with a higher --patience they trained
    NaN weights again); the line says what is kept, not "raise --patience"."""
    from ncf.train.loop import DIVERGED_EPOCH, LOSS_DIVERGED, diverged_epoch
    from ncf.train.trainer import stopped_early

    first_version = {"epoch": 2, "stale": 1, "history": [{"epoch": 1}, {"epoch": 2, LOSS_DIVERGED: 1.0}]}
    assert diverged_epoch(first_version) == 2 and diverged_epoch({"history": [{"epoch": 1}]}) is None
    validated = TrainConfig(data="DATA", patience=5)
    said = stopped_early("r", {**first_version, "best_epoch": 1}, validated)
    assert (
        said
        == "run r diverged in epoch 2 (its loss was not a number): nothing more is trained; its best epoch, 1, is kept"
    )
    assert stopped_early("r", {"epoch": 1, DIVERGED_EPOCH: 1}, validated).endswith("; no epoch is kept")
    refit = dataclasses.replace(validated, run="refit")
    assert stopped_early("r", {"epoch": 1, DIVERGED_EPOCH: 1}, refit).endswith("; nothing to export")
    assert stopped_early("r", {"epoch": 1, "stale": 0, "history": [{"epoch": 1}]}, validated) is None  # healthy


def test_the_other_ranks_wait_for_a_large_validation_sample():
    """Rank 0 validates alone while the others wait in a broadcast: --val-users 500000 on 10M
    households outlasted the fixed 30 minutes, and Ray retried the epoch twice, then failed (a
    review of ncf/train, 2026-12-07)."""
    from ncf.train.trainer import COLLECTIVE_TIMEOUT_S, WHOLE_VALIDATION_TIMEOUT_S, collective_timeout_s

    assert collective_timeout_s(TrainConfig()) == COLLECTIVE_TIMEOUT_S + 600 // 20  # the default sample
    assert collective_timeout_s(TrainConfig(val_users=500_000)) == COLLECTIVE_TIMEOUT_S + 25_000
    assert collective_timeout_s(TrainConfig(val_users=0)) == WHOLE_VALIDATION_TIMEOUT_S
    assert collective_timeout_s(TrainConfig(val_users=10_000_000)) == WHOLE_VALIDATION_TIMEOUT_S  # never more
    assert collective_timeout_s(TrainConfig(val_users=500_000, run="refit")) == COLLECTIVE_TIMEOUT_S  # no validation


def test_a_resumed_run_that_stopped_early_says_more_epochs_train_nothing():
    from ncf.train.trainer import stopped_early

    saved = {"epoch": 4, "stale": 2}
    assert stopped_early("r1", saved, TrainConfig(epochs=10, patience=2)) == (
        "run r1 stopped early at epoch 4 (patience 2): nothing to train; raise --patience to continue"
    )
    assert stopped_early("r1", saved, TrainConfig(epochs=10, patience=3)) is None  # it trains on
    assert stopped_early("r1", saved, TrainConfig(epochs=4, patience=2)) is None  # no more epochs asked
    assert stopped_early("r1", saved, TrainConfig(epochs=10, patience=2, run="refit")) is None


@pytest.mark.faults
def test_a_checkpoint_the_os_will_not_read_is_not_called_damaged(tmp_path, monkeypatch):
    """A checkpoint that cannot be opened (no permission, a failing disk) was reported as damaged,
    with advice to remove the run's folder: its checkpoints, perhaps whole, lost for an access
    problem. Now one line naming the file and the error; a damaged one is still called so."""
    from ncf.jsonio import write_json
    from ncf.model.directory import WEIGHTS
    from ncf.train import checkpoint as ckpt

    run = tmp_path / "run"
    directory = run / "checkpoint_000001"
    directory.mkdir(parents=True)
    torch.save({"w": torch.zeros(4)}, directory / WEIGHTS)
    write_json(str(directory / ckpt.TRAIN_STATE), {"epoch": 1})
    result = {"checkpoint_dir_name": directory.name, "metrics": {}}
    write_json(str(run / ckpt.RAY_INDEX), {"checkpoint_results": [result], "latest_checkpoint_result": result})

    def denied(path, *args, **kwargs):  # as chmod 000 would, for a test that may run as root
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(InputError) as refused:
        ckpt.check_readable(str(directory))
    assert str(refused.value) == (
        f"cannot read {directory / WEIGHTS} (EACCES: Permission denied): check its access and the disk"
    )
    monkeypatch.setattr(ckpt, "read_train_state", denied)
    with pytest.raises(InputError, match=r"^cannot read .*train_state\.json \(EACCES"):
        ckpt.resumed_checkpoint(str(run))
    monkeypatch.setattr(ckpt, "read_json", denied)  # Ray Train's index of the run
    with pytest.raises(InputError, match=rf"^cannot read .*{ckpt.RAY_INDEX} \(EACCES"):
        ckpt.kept_checkpoints(str(run))
    monkeypatch.undo()
    (directory / ckpt.TRAIN_STATE).write_text('{"epoch": ')  # cut short: damaged, as before
    with pytest.raises(InputError, match="has no readable train_state.json; give this training a new --name"):
        ckpt.resumed_checkpoint(str(run))


def test_a_run_exported_again_keeps_one_tensorboard_event_file(tmp_path):
    """Each export added an event file to the run's folder, and TensorBoard drew every epoch once
    per export."""
    from ncf.train.tensorboard import write_history

    logdir = str(tmp_path / "run" / "tensorboard")
    write_history([{"epoch": 1, "train_loss": 0.9}], logdir)
    write_history([{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.7}], logdir)
    (events,) = os.listdir(logdir)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(logdir).st_mode & 0o777 == 0o777 & ~umask  # readable by a teammate's TensorBoard, as before
    assert open(os.path.join(logdir, events), "rb").read().count(b"train/train_loss") == 2
    assert os.listdir(tmp_path / "run") == ["tensorboard"]  # no temporary folder left beside it

    real_replace, calls = os.replace, []

    def second_rename_fails(source, target):
        calls.append(target)
        if len(calls) == 2:  # the fresh folder's rename in, after the old one was moved aside
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", second_rename_fails)
        with pytest.raises(OSError, match="No space left"):
            write_history([{"epoch": 3, "train_loss": 0.5}], logdir)
    # The failure was the swap's (the old folder aside, the fresh one's rename in refused), which
    # then renamed the old folder back where the fresh one failed to go.
    assert len(calls) == 3 and calls[1] == calls[2] == str(logdir), calls
    # The previous curves are back where TensorBoard reads them, nothing hidden left beside them.
    assert os.listdir(tmp_path / "run") == ["tensorboard"] and os.listdir(logdir) == [events]
