"""Multi-node runs on one machine: a head and a worker node (``ray.cluster_utils.Cluster``).

Each node has 1 CPU, so work that needs more than one CPU at a time must use both nodes:

* preprocessing of the small synthetic dataset runs tasks on both nodes and writes the same
  stats and examples as the session's single-node run of the same logs (``small_data``);
* a 2-worker training run shards the embedding tables (TorchRec), fed by reads on the node
  its workers leave free;
* batch scoring runs one scoring actor per node and commits every user's top-K;
* a sweep of two trials at once finishes, each trial's reads fitting the half CPU left beside it.

The module needs its own Ray connection, so it shuts the session's local cluster down (after
``small_data`` has used it) and starts it again afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, Set

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from conftest import SMALL_MODEL
from helpers import REPO, free_port

from ncf.batch import scoring as batch_scoring
from ncf.batch.verify import verify_partition
from ncf.data import datasets, schema
from ncf.data.examples import ExampleConfig
from ncf.data.preprocess import PreprocessConfig, preprocess
from ncf.data.user_state import UserStates
from ncf.train.checkpoint import best_checkpoint, export_model_dir
from ncf.train.config import TrainConfig
from ncf.train.trainer import fit

# The default (200 partitions per shuffle) adds task overhead for nothing on this small a
# dataset; four partitions still give every shuffle several tasks to place.
SHUFFLE_PARTITIONS = 4
USERS_PER_FILE = 25  # six input files, so reading and validating is six tasks
K = 5

pytestmark = pytest.mark.slow  # about 4 minutes: a cluster start, preprocessing, training, scoring, a sweep


def _restart_session_cluster(ray) -> None:
    """Brings back the session's local cluster as ``tests/conftest.py`` starts it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)


@pytest.fixture(scope="module")
def two_nodes(small_data) -> Dict[str, str]:
    """The driver connected to a head and a worker node (1 CPU each); {"head": id, "worker": id}.

    Takes ``small_data`` first: the reference run needs the session's cluster, which this
    fixture then replaces.
    """
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    context = ray.data.DataContext.get_current()
    saved_partitions = context.default_hash_shuffle_parallelism
    context.default_hash_shuffle_parallelism = SHUFFLE_PARTITIONS
    cluster = None
    try:
        # The state API needs a dashboard; 8265 may be taken. Inside the try: a port taken before
        # Ray binds it must still leave the session's cluster restored for the tests after these.
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": free_port()})
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        ids = {"head": cluster.head_node.node_id, "worker": worker.node_id}
        assert set(ids.values()) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield ids
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        context.default_hash_shuffle_parallelism = saved_partitions
        _restart_session_cluster(ray)


@pytest.fixture(scope="module")
def two_node_run(two_nodes, small_data, tmp_path_factory) -> Dict:
    """The same logs and settings as ``small_data``, written as six files and preprocessed on
    both nodes; records the window in which its tasks started (for the state API)."""
    _, reference_stats = small_data
    root = tmp_path_factory.mktemp("two_nodes")
    logs, catalog = datasets.write_synthetic(str(root / "raw"), datasets.SMALL, users_per_file=USERS_PER_FILE)
    recorded = reference_stats["config"]
    config = PreprocessConfig(**{**recorded, "examples": ExampleConfig(**recorded["examples"])})
    started_ms = int(time.time() * 1000)
    data = str(root / "data")
    stats = preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data, config)
    return {"data": data, "stats": stats, "window_ms": (started_ms, int(time.time() * 1000))}


def _task_nodes(window_ms, expect: str = "", on: Set[str] = frozenset(), wait_s: float = 60) -> Dict[str, Set[str]]:
    """Node ids by task name, for the finished tasks that started inside the window. Each node
    reports task events to the GCS about once a second, on its own schedule, so the last tasks of
    a run can be missing from a listing made right after it: with ``expect`` (and ``on``), listed
    again, 0.5 s apart for ``wait_s`` at most, until a task whose name contains it is there (and
    tasks on every node of ``on``)."""
    from ray.util.state import list_tasks

    started, ended = window_ms
    deadline = time.monotonic() + wait_s
    while True:
        nodes: Dict[str, Set[str]] = {}
        for task in list_tasks(
            filters=[("state", "=", "FINISHED")], limit=10_000, detail=True, raise_on_missing_output=False
        ):
            if task.node_id and task.start_time_ms and started <= task.start_time_ms <= ended:
                nodes.setdefault(task.name, set()).add(task.node_id)
        listed = any(expect in name for name in nodes) and on <= set().union(*nodes.values())
        if not expect or listed or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def _actor_nodes(name_part: str) -> Set[str]:
    """Node ids of the actors (alive or dead) whose class or repr name contains ``name_part``
    (Ray Data's pool actors are ``_MapWorker``s named after their function in the repr)."""
    from ray.util.state import list_actors

    actors = list_actors(limit=10_000, detail=True, raise_on_missing_output=False)
    return {a.node_id for a in actors if a.node_id and (name_part in a.class_name or name_part in (a.repr_name or ""))}


def _canonical_rows(directory: str, partitioning=None):
    """Every row under a Parquet directory in one canonical order (the write order is not).

    List columns become tuples so that rows sort on every column."""
    table = pads.dataset(directory, format="parquet", partitioning=partitioning).to_table()
    frame = table.to_pandas()
    for name in table.column_names:
        if pa.types.is_list(table.schema.field(name).type) or pa.types.is_fixed_size_list(
            table.schema.field(name).type
        ):
            frame[name] = frame[name].map(tuple)
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def _comparable(stats: Dict) -> Dict:
    """Stats without what differs by design: timing and the input file names (the rows per
    file are compared by their total)."""
    comparable = {k: v for k, v in stats.items() if k not in ("seconds", "inputs", "rows_by_file")}
    comparable["rows_from_files"] = sum(stats["rows_by_file"].values())
    return comparable


def test_preprocessing_on_two_nodes_uses_both_and_matches_one_node(two_node_run, small_data, two_nodes):
    reference, reference_stats = small_data
    stats, data = two_node_run["stats"], two_node_run["data"]
    assert stats["rows_in"] == stats["rows_kept"] + stats["rows_quarantined"] > 0
    assert _comparable(stats) == _comparable(reference_stats)
    assert _canonical_rows(os.path.join(data, "examples"), "hive").equals(
        _canonical_rows(os.path.join(reference, "examples"), "hive")
    )
    mine, theirs = (
        UserStates.load(os.path.join(data, "user_state")),
        UserStates.load(os.path.join(reference, "user_state")),
    )
    for name in ("offsets", "products", "timestamps"):
        assert (getattr(mine, name) == getattr(theirs, name)).all(), name

    by_task = _task_nodes(two_node_run["window_ms"], "MapBatches(_build_list_file)", on=set(two_nodes.values()))
    placement = {name: sorted(node[:8] for node in nodes) for name, nodes in by_task.items()}
    assert set().union(*by_task.values()) == set(two_nodes.values()), placement
    # The lists were built and written by Ray tasks, not by the driver (one task per lists file:
    # write_examples refuses a file two tasks wrote, and check_lists_found lists the driver cannot see).
    assert any("MapBatches(_build_list_file)" in name for name in by_task), placement


@pytest.fixture(scope="module")
def sharded_training(two_node_run, tmp_path_factory):
    """One short epoch of 2-worker training (sharded tables) on the two-node data."""
    config = TrainConfig(
        data=two_node_run["data"],
        model=SMALL_MODEL,
        epochs=1,
        batch_size=8,
        val_users=20,
        max_steps_per_epoch=6,
        patience=5,
    )
    started_ms = int(time.time() * 1000)
    result = fit(
        config,
        num_workers=2,
        storage_path=str(tmp_path_factory.mktemp("ray_results")),
        name="two_nodes",
        max_failures=0,
    )
    return result, (started_ms, int(time.time() * 1000))


def test_two_worker_training_shards_the_tables_with_data_from_the_other_node(sharded_training, two_nodes):
    result, window = sharded_training
    assert result.error is None, result.error
    metrics = result.metrics
    assert metrics["world_size"] == 2 and metrics["sharded_tables"] == 4
    assert metrics["train_loss"] > 0

    # Each worker reserves half a CPU and Ray Train packs them: both land on one node, whose
    # CPU they then hold, so reads that feed them run on the other node. (Under load a read can
    # start on the workers' node before they take its CPU, so not every read need be remote.)
    workers = _actor_nodes("RayTrainWorker")
    assert len(workers) == 1 and workers <= set(two_nodes.values()), workers
    # The training lists are read by Ray Data map tasks (MapBatches(read_list_file)).
    listed = _task_nodes(window, expect="read_list_file")
    readers = set().union(*(nodes for name, nodes in listed.items() if "read" in name.lower()))
    assert readers - workers, (readers, workers)


@pytest.fixture(scope="module")
def trained_model_dir(sharded_training, two_node_run, tmp_path_factory):
    """The gathered (unsharded) weights of the 2-worker run as a model directory."""
    result, _ = sharded_training
    checkpoint, metrics = best_checkpoint(result)
    return export_model_dir(
        checkpoint, str(tmp_path_factory.mktemp("model") / "v1"), two_node_run["data"], {"training": metrics}, "v1"
    )


def _wait_for_free_cpus(wait_s: float = 60) -> None:
    """Until every CPU of the cluster is free: the training before frees its placement group's
    (a CPU on each node) asynchronously, and an actor pool started meanwhile places one actor
    only (the full suite, 2026-12-07)."""
    import ray

    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        assert time.monotonic() < deadline, (ray.available_resources(), ray.cluster_resources())
        time.sleep(0.5)


def test_batch_scoring_runs_one_actor_per_node_and_commits_every_user(
    trained_model_dir, two_node_run, two_nodes, tmp_path
):
    _wait_for_free_cpus()
    data = two_node_run["data"]
    output = str(tmp_path / "scores")
    config = batch_scoring.BatchScoreConfig(
        model=trained_model_dir,
        data=data,
        output=output,
        k=K,
        at="data-end",
        batch_size=16,
        cpus_per_actor=1.0,
        score_in="actors",
    )
    summary = batch_scoring.run_batch_scoring(config, log=lambda message: None)

    assert summary["users"] == two_node_run["stats"]["vocab_sizes"]["num_users"] - 1
    assert summary["rows"] == summary["users"] * K
    assert _actor_nodes("ScoreBatch") == set(two_nodes.values())
    report = verify_partition(output, summary["run_date"], data, sample=10)
    assert report["ok"], report


@pytest.mark.faults
def test_a_sweep_of_two_trials_at_once_on_two_nodes_finishes(two_node_run, two_nodes, tmp_path):
    """Two trials at once on two 1-CPU nodes: a trial's worker and its Tune actor take half a CPU,
    so a node holding one has half a CPU free and neither has a whole one. Read tasks asked for a
    whole CPU and the sweep waited for them forever; they ask for a quarter now."""
    import ray

    output = str(tmp_path / "sweep")
    command = [sys.executable, "-m", "jobs.tune_sweep", "--data", two_node_run["data"], "--output", output]
    command += ["--trials", "2", "--concurrent", "2", "--epochs", "1", "--max-steps-per-epoch", "3"]
    command += ["--val-users", "20", "--batch-size", "8"]
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }
    limit_s = 300  # it takes about 80 s
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as e:  # its output comes as bytes
        pytest.fail(f"the sweep did not finish in {limit_s} s: {(e.stdout or b'')[-2000:].decode(errors='replace')}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[sweep] 2 trials, 2 at a time" in done.stdout
    assert len(pd.read_parquet(os.path.join(output, "results.parquet"))) == 2
