"""Nightly batch scoring: the top-K products of every user, with Ray Data, committed all or nothing.

Every user of the data's vocabulary goes through ``map_batches`` on a pool of actors, each of
which loads :class:`ncf.rank.recommender.Recommender` once and ranks through its ranker's
``rank`` (many households per model call, each ranked as ``Recommender.recommend`` ranks it):
the same two-stage ranking, settings and cold start as the Serve endpoint. Each actor writes
the Parquet part of its batch and returns counts, so the driver reports progress as parts land.
A small DATA (``score_in``, :data:`DRIVER_MAX_USERS`) is scored by the driver itself through the
same :class:`ncf.batch.scorer.ScoreBatch`, one batch after another, without Ray: a pool takes longer to start
than the driver takes to rank it.
The driver resolves MODEL and DATA (symlinks included) once and reads the users and the model
version; each actor loads both again by those paths and checks that it has the same model
version and that each batch's positions still name its user ids in the vocabulary, so a MODEL
or DATA replaced mid-run fails the run (nothing committed) instead of writing wrong rows.

Output layout::

    OUT/
      run_date=2017-11-27/          one committed partition per date of ``at``
        part-0000000001.parquet     user_id, rank, product_id, score, cold_start, model_version,
                                    scored_at (and reason, with ``explain``: partitions.REASON_TYPE)
        _SUCCESS                    JSON: users, rows, k, cold_start_users, replay, model_version,
                                    at, seconds, ...
      _tmp/                         runs in progress and replaced partitions (readers skip
                                    names that start with "_" or ".", as pyarrow does)
      _commit/                      per-date lock files and, mid-commit, the commit's journal

Commit protocol (:mod:`ncf.batch.commit`): a run holds its date's lock from start to end (a
second run of the same date is refused with a one-line error, exit status 75); parts go to
``OUT/_tmp/run_date=D/RUN_ID/``; the counts are checked (every user exactly K rows, nothing
twice); ``_SUCCESS`` is written into the staged run as its last file; then a journaled swap
replaces the partition (fsynced; a run that dies between the two renames is rolled forward by
the next run, so the dead run's complete partition is not lost). The swap is not atomic for
readers: between its two renames (old partition out, new one in; one directory fsync apart)
the date has no partition, and a reader looking then finds it absent. A committed partition always
carries its ``_SUCCESS``, a rerun of a date replaces it, and a run that dies before its commit
leaves only ``_tmp`` entries: the next run of that date continues its whole parts when both have
the same plan (:data:`PLAN`, :func:`continuable`; ``resume``) and removes them otherwise. Readers should treat a
partition without ``_SUCCESS`` as absent (:func:`ncf.batch.partitions.read_partition` does); the
checks of ``--verify`` are :mod:`ncf.batch.verify`.

Example::

    config = BatchScoreConfig(model="artifacts/demo/model", data="artifacts/demo/data",
                              output="artifacts/batch/cj", k=10, at="data-end")
    summary = run_batch_scoring(config)      # {"users": 2462, "rows": 24620, ...}
    table = partitions.read_partition(config.output, summary["run_date"])
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ncf.batch import commit
from ncf.batch.commit import PartitionRun
from ncf.batch.partitions import count_users, id_type_changes, id_types_note, partition_name, read_users
from ncf.batch.scorer import (
    InputsChanged,
    ScoreBatch,
    changed_inputs,
    check_inputs_unchanged,
    input_error_in,
    input_fingerprints,
    inputs_changed_in,
    part_name,
    remote_cause,
    replaced_note,
)
from ncf.batch.verify import VerificationFailed, verify_parts
from ncf.cluster import joins_a_cluster
from ncf.code import source_digest
from ncf.data import layout
from ncf.data.features import Catalog
from ncf.data.product_stats import ProductStats
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies, Vocabulary
from ncf.device import GPU_SETTINGS, gpu_build_missing, gpus_usable, resolve_gpu
from ncf.errors import InputError, raised_within, stopped_by_sigterm
from ncf.jsonio import read_json, write_json
from ncf.model.ann import index_path
from ncf.model.directory import WEIGHTS, ModelDir, read_config
from ncf.moments import (
    AHEAD_OF_THE_CLOCK_S,
    NOW,
    SECONDS_PER_DAY,
    after_the_data,
    day_of,
    first_rankable,
    resolve_at,
    run_date_of,
)
from ncf.rank.candidates import RankingSettings
from ncf.rank.ranker import CHUNK_USERS, MAX_K
from ncf.rank.state import (
    EmbeddingRows,
    RankingState,
    check_catalog,
    check_model_and_data,
    histories_against_model,
)
from ncf.staging import check_named, within

COMPILE_SETTINGS = ("auto", "yes", "no")
COMPILE_MIN_USERS_PER_ACTOR = 100_000
SCORE_IN_SETTINGS = ("auto", "driver", "actors")
# Up to this many users, `auto` scores in the driver: a pool of actors takes about 7.5 s to score
# its first household on 2 cores (Ray Data's executor, worker processes, importing torch and
# TorchRec), in which the driver, already holding torch, ranks about 5,000 households.
DRIVER_MAX_USERS = 5_000
# About this many parts per run: progress is visible, files are not tiny.
TARGET_PARTS = 50
# ... of at most this many users each (312 model calls of the ranker's 32), so large datasets get
# more parts.
MAX_AUTO_BATCH = 9_984
CPUS_PER_ACTOR = 1.0  # what each scoring actor reserves unless told
# Households/s of one GPU actor over one 1-CPU actor, each with one host thread: ranking is
# host-bound (building each household's candidates and features; the model is 7% of a GPU
# actor's time), so an H200 ranked Complete Journey at 1.85 times one core of its host
# (`bench.gpu_model`, BENCHMARKS.md "GPU"). `--gpu auto` takes GPU actors only where they
# outrank the CPU actors the cluster could run.
GPU_ACTOR_SPEEDUP = 1.85
# A nightly run whose DATA ends this long before the moment scored says so: its refresh stopped.
STALE_DATA_DAYS = 2
_START_GPU_NODES = " (or start GPU nodes first)"  # a refused --gpu yes; training's names --gpu-wait
# What a scoring actor holds besides its model's weights and MF index: the process with torch
# and TorchRec, and per household of DATA its ids, rows and state pages. Fitted to the two
# measured peaks (`bench.scale`, BENCHMARKS.md): Complete Journey's 641 MiB (2,469 households,
# 24 MB of weights) and 10M x 1M's 4,876 MiB (about 3.0 GiB of weights and index).
ACTOR_BASE_BYTES = 640 << 20
ACTOR_BYTES_PER_HOUSEHOLD = 128


@dataclass
class BatchScoreConfig:
    """One batch-scoring run.

    Args:
        model: model directory.
        data: preprocessed data directory; its user vocabulary is the set of users scored.
        output: OUT (see the module docstring).
        k: products per user.
        at: the moment scored (temporal features) and the partition's date: ISO date or
            datetime (UTC unless it says), ``"now"`` (the clock, or ``"data-end"`` where DATA's
            purchases reach past it) or ``"data-end"`` (the first moment after DATA's last
            purchase, the midnight after its last day in a log of dates: ``after_the_data``; for
            historical datasets).
        batch_size: users per batch and part (0: about ``TARGET_PARTS`` parts of at most
            ``MAX_AUTO_BATCH`` users, so more parts for large datasets).
        actors: scoring actors (0: one per ``cpus_per_actor`` of the cluster's CPUs, or one per
            GPU where ``gpu`` takes GPUs: :func:`actor_plan`).
        cpus_per_actor: CPUs reserved by each actor (None: :data:`CPUS_PER_ACTOR`; given, it
            is a pool's setting: refused with ``score_in="driver"``, actors under ``auto``).
        gpu: ``auto`` (GPU actors where they outrank the CPU actors the cluster could run:
            :func:`actor_plan`), ``yes`` or ``no``.
        score_in: ``actors`` (a Ray Data pool), ``driver`` (this process, one batch after
            another, on its own CUDA device with ``gpu="yes"``: no actors to
            start, no Ray needed; ``actors`` and ``cpus_per_actor`` are refused with it) or
            ``auto`` (the driver for at most :data:`DRIVER_MAX_USERS` users unless ``actors``,
            ``cpus_per_actor`` or ``gpu="yes"`` ask for actors).
        compile: score through ``torch.compile`` in each actor: ``auto`` (CPU actors with at
            least :data:`COMPILE_MIN_USERS_PER_ACTOR` users each, so that the compilation pays
            for itself, and a C++ compiler installed; never on GPUs: :func:`resolve_compile`),
            ``yes`` or ``no``.
        progress_every_s: seconds between progress lines (the first part always prints).
        verify: when above 0, the staged output is checked before the commit
            (:func:`verify_parts`, with this many sampled users) and not committed unless it
            passes: the previous partition stays.
        overwrite: write into an OUT that is not a batch-scoring directory, and replace a
            partition directory without ``_SUCCESS`` (:func:`ncf.batch.commit.check_output`
            refuses both otherwise).
        explain: each row also carries ``reason`` (:data:`ncf.batch.partitions.REASON_TYPE`, null for a cold start):
            the product's purchase timing for the household and the model's scores had the
            household never bought it or its category (:mod:`ncf.rank.reasons`), as Serve's
            ``explain`` gives them. Two more model questions per row: several times slower.
        resume: keep the parts of a dead run of the same date whose plan is this run's
            (:func:`continuable`: the same MODEL, DATA, settings and moment) and score only the
            others; False removes them and scores every user.
    """

    model: str
    data: str
    output: str
    k: int = 10
    at: str = "now"
    batch_size: int = 0
    actors: int = 0
    cpus_per_actor: Optional[float] = None
    gpu: str = "auto"
    score_in: str = "auto"
    compile: str = "auto"
    progress_every_s: float = 10.0
    verify: int = 0
    overwrite: bool = False
    explain: bool = False
    resume: bool = True

    @property
    def actor_cpus(self) -> float:
        return CPUS_PER_ACTOR if self.cpus_per_actor is None else self.cpus_per_actor

    @property
    def pool_settings_given(self) -> bool:
        """Whether ``actors`` or ``cpus_per_actor`` was set: settings only a pool of actors reads."""
        return self.actors != 0 or self.cpus_per_actor is not None


def _log(message: str) -> None:
    # stderr: the job's stdout is its summary, one JSON line.
    print(f"[batch_score] {message}", file=sys.stderr, flush=True)


# -- the moment scored and where it goes ---------------------------------------------------------


# -- the users -------------------------------------------------------------------------------------


def new_to_model(model: str, data: str) -> int:
    """Households of ``data`` with purchases whose model embedding row is the unknown one (the
    tables never saw them, first saw them after the model's labels ended, or no training list
    held them)."""
    handle = ModelDir(model)
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    rows = EmbeddingRows.of_model(handle, vocabs).user
    with_purchases = np.diff(UserStates.load(layout.user_state_dir(data)).offsets) > 0
    return int(((rows == 0) & with_purchases)[1:].sum())


def auto_batch_size(num_users: int) -> int:
    """About ``num_users / TARGET_PARTS``, rounded up to whole model calls of the ranker's
    ``CHUNK_USERS`` households (a batch of 50 was a call of 32 and one of 18)."""
    size = -(-max(1, -(-num_users // TARGET_PARTS)) // CHUNK_USERS) * CHUNK_USERS
    return int(min(size, MAX_AUTO_BATCH))


# -- the run ---------------------------------------------------------------------------------------


def actor_memory(model: str, households: int) -> int:
    """Bytes a scoring actor of ``model`` ranking ``households`` holds at its peak, about: its
    weights and MF index as read, and :data:`ACTOR_BASE_BYTES` + :data:`ACTOR_BYTES_PER_HOUSEHOLD`
    per household. The pool asks Ray for that much memory per actor, so that Ray places actors
    by memory as well as by CPUs."""
    return model_bytes(model) + ACTOR_BASE_BYTES + ACTOR_BYTES_PER_HOUSEHOLD * households


def model_bytes(model: str) -> int:
    """Bytes of ``model``'s weights and MF index: what loading it adds to a process, about."""
    files = [os.path.join(model, WEIGHTS), index_path(model)]
    return sum(os.path.getsize(f) for f in files if os.path.exists(f))


def actor_slots(nodes: List[Dict[str, float]], cpus_per_actor: float, memory_per_actor: int) -> int:
    """How many actors of ``cpus_per_actor`` CPUs and ``memory_per_actor`` bytes the ``nodes``
    (each node's Ray resources) hold at once, each node by its CPUs and by its memory."""
    slots = 0
    for node in nodes:
        by_cpus = int(node.get("CPU", 0) // cpus_per_actor)
        slots += min(by_cpus, int(node.get("memory", 0) // memory_per_actor)) if memory_per_actor > 0 else by_cpus
    return slots


def _actor_resources(
    gpu: str, actors: int, cpus_per_actor: float, blocks: int, memory_per_actor: int
) -> tuple[int, int]:
    """(number of actors, GPUs per actor) from the cluster's resources (:func:`actor_plan`)."""
    import ray

    _check_an_actor_fits(cpus_per_actor)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    slots = actor_slots(nodes, cpus_per_actor, memory_per_actor)
    by_cpus = actor_slots(nodes, cpus_per_actor, 0)
    each = f"of about {memory_per_actor / 2**30:.1f} GiB each (the model's weights and index, and the households)"
    if not any(n.get("CPU", 0) > 0 for n in nodes):
        # cluster.yaml's head declares no CPUs, so a job started before its autoscaler adds a
        # worker finds none; it is the CPUs that are missing, not memory.
        waiting = f"the {min(actors, blocks)} actors asked for wait" if actors > 0 else "one actor waits"
        _log(
            f"no node up has a CPU yet (a head of 0 CPUs, as cluster.yaml's): {waiting} for the autoscaler "
            "to add workers (--actors N asks for N at once)"
        )
    elif slots == 0 and by_cpus > 0:  # CPUs too few: _check_an_actor_fits said so, memory is not why
        largest = max((n.get("memory", 0) for n in nodes), default=0) / 2**30
        short = f"no node of the cluster has the memory for one scoring actor {each}; the largest has {largest:.1f} GiB"
        if not joins_a_cluster():  # Ray Data would wait for it, the date's lock held
            raise InputError(f"{short}: run on nodes with more memory, or --score-in driver")
        _log(f"{short} now: the actors wait for the autoscaler to add one")
    resources = ray.cluster_resources()
    if not gpus_usable(gpu, gpu_build_missing(training=False), int(resources.get("GPU", 0))):
        gpu = "no"  # the actors' torch has no CUDA: each would fail on its first batch
    planned, gpus = actor_plan(gpu, actors, cpus_per_actor, resources, blocks, slots)
    if not gpus and actors <= 0 and 0 < slots < min(by_cpus, blocks):
        _log(f"{planned} CPU actor(s), not {min(by_cpus, blocks)}: the nodes' memory holds {slots} {each}")
    elif not gpus and 0 < slots < min(actors, blocks):
        _log(f"--actors {actors}: the nodes up now hold {slots} {each}; the others wait for nodes an autoscaler adds")
    return planned, gpus


def actor_plan(
    gpu: str,
    actors: int,
    cpus_per_actor: float,
    resources: Dict[str, float],
    blocks: int,
    slots: Optional[int] = None,
) -> tuple[int, int]:
    """(number of actors, GPUs per actor) for ``blocks`` batches on a cluster of ``resources``:
    ``actors`` (0: one per GPU on GPUs, else one per ``cpus_per_actor`` of its CPUs, or the
    ``slots`` its nodes' CPUs and memory hold (:func:`actor_slots`); never more than the
    blocks), each with a GPU where ``gpu`` allows and there is one per actor. ``auto`` with
    ``actors`` unset takes GPUs only where they outrank the CPU actors that would score the
    blocks (:data:`GPU_ACTOR_SPEEDUP`), and says which it chose and why.

    Raises:
        InputError: ``yes`` without a GPU, or with fewer GPUs than ``actors`` (Ray Data would wait
            for the missing ones).
    """
    gpus = int(resources.get("GPU", 0))
    fit = int(resources.get("CPU", 1) // cpus_per_actor) if slots is None else slots
    cpu_actors = max(1, min(fit, blocks))
    actors = min(actors, blocks)  # the pool never starts more actors than batches
    # actors 0: as many as there are GPUs, so one GPU is enough.
    use = resolve_gpu(gpu, gpus, workers=max(1, actors), holders="actors", advice=_START_GPU_NODES)
    # In 1-CPU actors' worth: actors of a fraction of a CPU share its core, and more CPUs than one
    # hardly speed a host-bound actor up (16 threads ranked 1.9x one, BENCHMARKS.md "GPU").
    cpu_worth = cpu_actors * min(1.0, cpus_per_actor)
    if use and gpu == "auto" and actors <= 0 and min(gpus, blocks) * GPU_ACTOR_SPEEDUP < cpu_worth:
        _log(
            f"[gpu] --gpu auto: {cpu_actors} CPU actors, not {gpus} GPU actor(s): ranking is host-bound, "
            f"a GPU actor ranks about {GPU_ACTOR_SPEEDUP:g} times what a 1-CPU actor does (--gpu yes for GPU actors)"
        )
        use = False
    if actors <= 0:
        actors = min(gpus, blocks) if use else cpu_actors
    return max(1, actors), int(use)


def _check_an_actor_fits(cpus_per_actor: float) -> None:
    """Refuses (one line) actors no node of a local cluster can hold: Ray Data would wait for one
    for its 30 minutes without progress, the date's lock held, then fail with a traceback. A
    cluster the job joined (``RAY_ADDRESS``) may have an autoscaler that adds such a node
    (``cluster.yaml``'s workers start at none): there it is said, not refused."""
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    if not cpus or max(cpus) >= cpus_per_actor:
        return
    largest = max(cpus)
    if largest == 0 and joins_a_cluster():
        return  # no CPUs up yet, not too few: _actor_resources says so
    short = (
        f"--cpus-per-actor {cpus_per_actor:g}: no node of the cluster has that many CPUs (the largest has {largest:g})"
    )
    if not joins_a_cluster():  # RAY_ADDRESS=local too: the job's own cluster, no autoscaler
        raise InputError(f"{short}; ask for {largest:g} or fewer")
    _log(f"{short} now: the actors wait for the autoscaler to add one (Ray Data gives up after 30 minutes)")


def can_compile(use_gpu: bool = False) -> bool:
    """Whether ``torch.compile`` can build kernels here: Inductor's CPU kernels need a C++
    compiler; its CUDA kernels come from Triton, which ships with torch but builds its launcher
    with a C compiler at first use (without one every actor warned and scored eagerly)."""
    if use_gpu:
        return any(shutil.which(c) for c in (os.environ.get("CC", "gcc"), "cc", "clang"))
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


def resolve_compile(setting: str, users_per_actor: int, use_gpu: bool) -> bool:
    """Whether the actors score through ``torch.compile`` (``setting``: see BatchScoreConfig).
    ``auto`` never compiles for a GPU: there the model is 7% of an actor's time, and on an H200
    compiled scoring ranked 1.06x eager with one host thread (with 16: 1.21x and 0.93x in two
    runs), after about 30 s of compiling, which takes some 250,000 households an actor to repay
    at 1.06x (``bench.gpu_model``)."""
    if setting == "no":
        return False
    if setting == "yes":
        if not can_compile(use_gpu):
            needs = "a C compiler (gcc or $CC) for Triton on GPU" if use_gpu else "a C++ compiler (g++ or $CXX) on CPU"
            raise InputError(f"--compile yes: torch.compile needs {needs}")
        return True
    return not use_gpu and can_compile() and users_per_actor >= COMPILE_MIN_USERS_PER_ACTOR


def _check_k(k: int, recommender_config: Dict, model: str) -> None:
    # A hand-edited ranking's unknown names or sizes that are not counts: one line, not a TypeError.
    candidates = RankingSettings.of_model(recommender_config.get("ranking", {}), model).candidates
    catalog = recommender_config["model"]["num_products"] - 1
    # A ranking never holds more than `candidates` products: beyond it every actor would fail
    # mid-run. Up to it, every household's list is completed from the popular products (cold
    # starts list HOURLY_TOP), whatever its sources give; products known before the moment are
    # checked apart (_check_k_known).
    limit = min(MAX_K, candidates, catalog)
    if not 1 <= k <= limit:
        raise InputError(f"--k {k}: must be between 1 and {limit} for this model")


def _check_k_known(k: int, lines: Optional[np.ndarray], run_date: str, replay: bool = True) -> None:
    """A run ranks only products bought before its moment (``lines``: purchase lines per product
    index, as :class:`ProductStats` holds them; None: not checked): a replay those bought before
    its day, any other run those DATA's purchases hold. Fewer than ``k`` of them would leave every
    household's list short, each batch failing in its actor."""
    if lines is None:
        return  # not known here
    lines = np.asarray(lines)
    known = int((lines[1:] > 0).sum())
    if known == 0:
        what = f"no product was bought before {run_date}" if replay else "DATA holds no purchase"
        raise InputError(f"--k {k}: {what}")
    if k > known and replay:
        raise InputError(f"--k {k}: only {known} products were bought before {run_date}; rank a later day or fewer")
    if k > known:
        raise InputError(f"--k {k}: DATA's purchases hold only {known} products; rank {known} or fewer")


def _data_lines(data: str) -> Optional[np.ndarray]:
    """Purchase lines per product index in DATA's product stats: one column of a small file (None
    where it does not read: the verification of DATA's state names that, in one line)."""
    path = os.path.join(layout.product_stats_dir(data), "products.parquet")
    try:
        return pq.read_table(path, columns=["lines"]).column("lines").to_numpy()
    except (OSError, KeyError, pa.ArrowException):
        return None


# scored_in of a run that continued a dead run's stage and kept every part of it: nothing scored.
KEPT_ONLY = "continued"
PLAN = "_plan.json"  # in a run's stage: what its parts depend on, for a rerun to continue them
PLAN_KEYS = ("replay", "k", "explain", "batch_size", "users", "inputs", "code")  # equal, for a rerun to continue


def run_plan(
    config: BatchScoreConfig,
    at: int,
    inputs: Tuple[str, str],
    users: int,
    replay: bool,
    scored_at: Optional[int] = None,
) -> Dict:
    """What a run's parts depend on, written into its stage before the first part. ``scored_at``
    (the run's start, epoch seconds; None: ``at``) is not compared: a run continuing the stage
    writes it into its own rows, so that every row of a partition carries one ``scored_at``."""
    return {
        "at_epoch_s": at,
        "scored_at_epoch_s": at if scored_at is None else int(scored_at),
        "at": config.at,
        "replay": replay,
        "k": config.k,
        "explain": config.explain,
        "batch_size": config.batch_size or auto_batch_size(users),
        "users": users,
        "inputs": list(inputs),
        "code": source_digest(),  # a rerun after a fix must not keep the parts the old code scored
    }


def continuable(plan: Dict, stage: str) -> bool:
    """Whether a dead run's ``stage`` holds parts a run of ``plan`` may keep: the same MODEL and
    DATA (their fingerprints), code (``ncf/``), settings and batches, and the same moment; a run at ``now``
    continues another at ``now`` of its date (neither a replay) at that run's moment, so that a
    partition is always of one moment."""
    try:
        dead = read_json(os.path.join(stage, PLAN))
    except (OSError, ValueError):
        return False
    if not isinstance(dead, dict) or any(dead.get(key) != plan[key] for key in PLAN_KEYS):
        return False
    return dead.get("at_epoch_s") == plan["at_epoch_s"] or (plan["at"] == NOW == dead.get("at") and not plan["replay"])


def keeps_a_part(plan: Dict, stage: str, blocks: Dict[str, pa.Table], k: int) -> bool:
    """Whether a run of ``plan`` continues the dead run's ``stage``: :func:`continuable`, and the
    stage holds at least one whole part of ``blocks`` (by part name). A dead run that wrote no part
    (it died loading the model) leaves nothing worth its moment: a run at ``now`` would take that
    run's moment, and its ``scored_at``, for no part kept."""
    return continuable(plan, stage) and any(_kept_part(stage, name, block, k) for name, block in blocks.items())


def _kept_parts(stage: str, blocks: Dict[str, pa.Table], k: int) -> Dict[str, Dict]:
    """The parts of ``blocks`` (by part name) a continued run's stage already holds, as
    :func:`_collect` reports them, by name (:func:`_kept_part`)."""
    kept = {}
    for name, block in blocks.items():
        part = _kept_part(stage, name, block, k)
        if part is not None:
            kept[name] = part
    return kept


def _kept_part(stage: str, name: str, block: pa.Table, k: int) -> Optional[Dict]:
    """The part ``name`` of ``block`` in ``stage`` as :func:`_collect` reports it; None where it is
    absent, cannot be read, or has not ``k`` rows for each of its batch's users (its batch is
    scored again, and its part replaced)."""
    path = os.path.join(stage, name)
    if not os.path.exists(path):
        return None
    try:
        cold = pq.read_table(path, columns=["cold_start"]).column("cold_start")
    except (OSError, pa.ArrowException):
        return None
    if len(cold) != block.num_rows * k:
        return None
    cold_start_users = int(pc.sum(cold).as_py() or 0) // k
    return {"part": name, "users": block.num_rows, "rows": len(cold), "cold_start_users": cold_start_users}


def named_batches(users: pa.Table, batch_size: int) -> Dict[str, pa.Table]:
    """The run's batches of ``users``, in order, by the name of the part each writes (:func:`part_name`)."""
    blocks = [users.slice(i, batch_size) for i in range(0, users.num_rows, batch_size)]
    return {part_name(b.column("position").to_numpy()): b for b in blocks}


class StageIncomplete(RuntimeError):
    """The staged parts do not hold every user's ``k`` rows once: nothing is committed (one line;
    the parts are removed, so a rerun scores every user)."""


class ScoringFailed(RuntimeError):
    """The scoring stopped midway (an actor died or raised, a part could not be written), or its
    commit raised an I/O error and was not finished from its journal: nothing committed. Its
    message is one line: the cause's type and line, how many whole parts the stage keeps for a
    rerun of the same command to continue (``resume``)."""


class ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``by_sigterm``) stopped the run after it opened its stage. Its message
    is what it left: the parts the stage keeps for a rerun (:func:`_parts_left`), or a commit
    begun (finished from its journal, or journaled for the next run). A KeyboardInterrupt still:
    no ``except Exception`` takes it for a failure."""

    def __init__(self, message: str = "", by_sigterm: bool = False) -> None:
        super().__init__(message)
        self.by_sigterm = by_sigterm


# What a run leaves whose swap was journaled and not rolled forward on its way out (a commit that
# failed, or was interrupted): the next run of the date finishes it.
_SWAP_JOURNALED = (
    "every part is scored and the swap journaled: the next run of this date finishes the commit (a run of the "
    "same plan then scores nothing again)"
)
_PARTS_REMOVED = "its parts are removed (--no-resume): rerun the same command to score every user again"


def rerun_to(what: str, at_setting: str, at: int, run_date: str) -> str:
    """How to rerun a failed run of ``run_date`` at ``at`` (epoch seconds) to ``what`` its kept
    parts: the same command, but ``--at now`` names another date after 00:00 UTC, so such a run
    names its moment in epoch seconds (a run at it continues the stage: :func:`continuable`)."""
    if at_setting != NOW:
        return f"rerun the same command to {what} (--no-resume starts afresh)"
    return (
        f"rerun the same command with --at {at} (this run's moment, run_date={run_date}) to {what}: --at now "
        "does so only until the clock passes 00:00 UTC, then scores the next date (--no-resume starts afresh)"
    )


def _failed_midway(
    error: BaseException, stage: str, named: Dict[str, pa.Table], config: BatchScoreConfig, at: int, run_date: str
) -> ScoringFailed:
    """The one line of a scoring run that raised ``error`` (what Ray wraps an actor's error in,
    or a batch's own in the driver): ``stage``'s whole parts of the run's batches ``named``
    stay for the next run (its parts are written whole or not at all: :func:`write_part`)."""
    kind, line = remote_cause(error)
    kept = _parts_left(stage, named, config, at, run_date)
    cause = f"{kind}: {line}" if line else kind
    return ScoringFailed(f"scoring failed midway ({cause}); nothing committed, {kept}{_traceback_kept(error)}")


def _parts_left(stage: str, named: Dict[str, pa.Table], config: BatchScoreConfig, at: int, run_date: str) -> str:
    """What a run stopped midway leaves for the next: ``stage``'s whole parts of the run's batches
    ``named`` (written whole or not at all: :func:`write_part`) and how a rerun continues them, or
    that they are removed (``--no-resume``)."""
    if not config.resume:
        return _PARTS_REMOVED
    try:
        whole = sum(1 for name in os.listdir(stage) if name in named)
    except OSError:
        whole = 0
    if whole == 0:  # nothing a rerun could continue (continuable): no moment to name
        return f"0 of {len(named)} parts are whole: rerun the same command to score every user"
    return f"{whole} of {len(named)} parts are whole and kept: " + rerun_to("continue", config.at, at, run_date)


def _traceback_kept(error: BaseException) -> str:
    """Where the whole traceback of ``error`` was written (the error's one line names its cause,
    not the file and line of a bug), or "" where it could not be."""
    try:
        handle, path = tempfile.mkstemp(prefix="ncf-batch-score-", suffix=".traceback.txt")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(error)))
    except OSError:
        return ""
    return f" (the traceback: {path})"


def _verify_stage(stage: str, users: int, k: int, reported: List[Dict]) -> int:
    """Rows in the staged parts; raises :class:`StageIncomplete` unless every user has exactly
    ``k`` rows, once."""
    parts = sorted(name for name in os.listdir(stage) if name.endswith(".parquet") and not name.startswith("."))
    rows = pads.dataset([os.path.join(stage, p) for p in parts], format="parquet").count_rows() if parts else 0
    reported_users = sum(r["users"] for r in reported)
    problems = []
    if sorted(r["part"] for r in reported) != parts:
        problems.append(f"{len(parts)} part files for {len(reported)} batches")
    if reported_users != users:
        problems.append(f"{reported_users} users scored of {users}")
    if rows != users * k:
        problems.append(f"{rows} rows written, {users * k} expected")
    if problems:
        raise StageIncomplete(
            f"{stage}: not committed: " + "; ".join(problems) + "; its parts are removed: rerun the same command "
            "to score every user again"
        )
    return rows


def _require(ok: bool, flag: str, value, what: str) -> None:
    if not ok:
        raise InputError(f"{flag} {value}: must be {what}")


def _check_numbers(config: BatchScoreConfig) -> None:
    # Otherwise they fail late: 0 CPUs per actor divides by zero in Ray, a negative batch size or
    # sample crashes after the scoring.
    _require(config.batch_size >= 0, "--batch-size", config.batch_size, "0 (automatic) or more users")
    _require(config.actors >= 0, "--actors", config.actors, "0 (automatic) or more")
    cpus = config.cpus_per_actor
    if cpus is not None:
        _require(math.isfinite(cpus) and cpus > 0, "--cpus-per-actor", cpus, "above 0")
    every = config.progress_every_s
    _require(math.isfinite(every) and every >= 0, "--progress-every", every, "0 or more seconds")
    _require(config.verify >= 0, "--verify", config.verify, "0 (no check) or more sampled users")


def _check_settings(config: BatchScoreConfig) -> None:
    if config.gpu not in GPU_SETTINGS:
        raise InputError(f"--gpu must be one of {', '.join(GPU_SETTINGS)}, not {config.gpu!r}")
    if config.score_in not in SCORE_IN_SETTINGS:
        raise InputError(f"--score-in must be one of {', '.join(SCORE_IN_SETTINGS)}, not {config.score_in!r}")
    if config.score_in == "driver" and config.pool_settings_given:
        # The driver scores in this process: a pool's size would be ignored, silently.
        raise InputError("--score-in driver scores in this process: --actors and --cpus-per-actor are for actors")
    if config.score_in == "driver" and config.gpu == "yes":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--score-in driver --gpu yes: this process has no CUDA device")
    if config.compile not in COMPILE_SETTINGS:
        raise InputError(f"--compile must be one of {', '.join(COMPILE_SETTINGS)}, not {config.compile!r}")
    if config.compile == "yes" and (config.gpu == "no" or (config.score_in == "driver" and config.gpu != "yes")):
        # Decidable here: the CPU needs a C++ compiler (actors under --gpu auto: once Ray shows the cluster).
        resolve_compile("yes", 0, use_gpu=False)


def check_config(config: BatchScoreConfig, now: Optional[float] = None, verify_inputs: bool = True) -> tuple[Dict, int]:
    """Fails fast (before Ray starts) on bad settings or numbers, a bad model, data, ``k`` or
    ``at``; returns the model's config and ``at`` in epoch seconds. ``verify_inputs``: also
    check MODEL against its checksums, DATA's state against itself and DATA's product ids against
    the model's (every byte read: a caller that did so already passes False)."""
    _check_settings(config)
    _check_numbers(config)
    model_config = read_config(os.path.abspath(config.model))
    _check_k(config.k, model_config, config.model)
    _check_output_apart(config)
    resolve_at(config.at, 0, now=now)  # a bad --at fails before the data is looked at
    stats = layout.DataStats(config.data)
    check_catalog(model_config["model"], stats.vocab_sizes, config.data)
    # data-end: the first moment after DATA's last purchase, so that every purchase is history
    # (a log of dates: the midnight after its last day), as Recommender.default_at reads it.
    dates_only = ProductStats.dates_only_in(layout.product_stats_dir(config.data))
    at = resolve_at(config.at, after_the_data(stats.end, dates_only), now=now)
    if at < first_rankable(stats.boundaries["start"]):
        # The products' stats of a past moment are those of its day's start: nothing known yet.
        raise InputError(
            f"--at {config.at}: the data's first purchase is on {run_date_of(stats.boundaries['start'])}; "
            "rank a later day"
        )
    # Every run ranks only products DATA's purchases hold (a replay: those bought before its day,
    # checked again once its stats are computed); fewer than k would fail every batch, after Ray started.
    _check_k_known(config.k, _data_lines(config.data), run_date_of(at), replay=False)
    # Before Ray starts; PartitionRun checks again under the date's lock.
    check_named(config.output)  # before abspath makes "" the working directory
    output, partition = os.path.abspath(config.output), partition_name(run_date_of(at))
    commit.check_output(output, partition, config.overwrite)
    # A second run of a live run's date is refused now, as PartitionRun would refuse it (the same
    # line, exit 75), not after minutes of verifying inputs, starting Ray and reading DATA.
    commit.refuse_if_running(output, partition)
    if verify_inputs:
        # Last, as they read every byte (the catalog, checked first above, again: a few bytes). The
        # actors load both without checksums: a damaged directory would rank wrongly, silently.
        _log("verifying MODEL against its checksums and DATA's state (every byte of both is read)")
        check_model_and_data(os.path.abspath(config.model), config.data)
    return model_config, at


def _check_output_apart(config: BatchScoreConfig) -> None:
    """OUT inside MODEL or DATA (or holding them) would be swapped away with them, or sealed into
    them: refused in one line."""
    for flag, path in (("--data", config.data), ("--model", config.model)):
        if within(config.output, path) or within(path, config.output):
            raise InputError(f"--output {config.output}: overlaps {flag} {path}; write the scores somewhere else")


def resolved(config: BatchScoreConfig) -> BatchScoreConfig:
    """MODEL and DATA with symlinks resolved, once for the run: a blue/green link repointed
    mid-run does not reach the actors, which load both again by path."""
    return dataclasses.replace(config, model=os.path.realpath(config.model), data=os.path.realpath(config.data))


def run_batch_scoring(
    config: BatchScoreConfig,
    log: Callable[[str], None] = _log,
    verified_inputs: Optional[Tuple[str, str]] = None,
    now: Optional[float] = None,
) -> Dict:
    """Scores every user of ``config.data`` and commits ``OUT/run_date=D``; returns the summary
    (the ``_SUCCESS`` content, with the verification report under ``verify`` when
    ``config.verify``). Needs Ray initialised (``jobs.cli.init_ray``) unless it scores in the
    driver (:func:`resolve_score_in`). ``verified_inputs``: MODEL's and DATA's
    :func:`input_fingerprints` taken before the caller's :func:`check_config` verified them (the
    job does so before starting Ray); None verifies them here. ``now``: what ``--at now`` names
    and the run's ``scored_at`` (epoch seconds), the one the caller's :func:`check_config` was
    given; None: the clock, read here.

    Raises:
        ncf.staging.Busy: another run of the same date is in progress (nothing is touched).
        VerificationFailed: ``config.verify`` and the staged output failed it (nothing committed).
    """
    started = time.time()
    now = started if now is None else now
    config = resolved(config)
    # Taken before the verification, so that the run's fingerprints are of what was verified.
    verified = verified_inputs or input_fingerprints(config.model, config.data)
    model_config, at = check_config(config, now=now, verify_inputs=verified_inputs is None)
    check_inputs_unchanged(config.model, config.data, verified, recorded_as="verified")
    inputs = verified
    if not inputs[0].startswith(f"{model_config['version']}:"):
        raise InputsChanged(f"MODEL is no longer version {model_config['version']!r}: {replaced_note('MODEL')}")
    model, output = config.model, os.path.abspath(config.output)
    run_date = run_date_of(at)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    users = read_users(config.data)
    new = new_to_model(model, config.data)
    if new:
        log(f"{new:,} households with purchases are new to the model: its unknown row, their own purchases")
    data_boundaries = layout.DataStats(config.data).boundaries
    data_end = data_boundaries["end"]
    replay = at <= data_end
    # The last purchase, not ``at``: a log of dates ranks "now" at the midnight after its last day,
    # hours ahead of the clock on that day with nothing stamped past it.
    if config.at == NOW and data_end - now > AHEAD_OF_THE_CLOCK_S:  # a live refresh's skew: no warning
        log(
            f"DATA's last purchase ({run_date_of(data_end)}, {(data_end - now) / 3600:.1f} hours after the clock) is "
            "past now: ranking at data-end, every purchase it holds history; are the log's timestamps local times "
            "read as UTC? (give their offsets)"
        )
    elif config.at == NOW and at - now > AHEAD_OF_THE_CLOCK_S:
        log(
            f"DATA is a log of dates whose last day is {run_date_of(data_end)}: 'now' ranks at the midnight after "
            f"it, when that day's purchases are a day old as at training's moments (partition run_date={run_date})"
        )
    id_changes = id_type_changes(output, run_date, config.data)
    for note in [*histories_against_model(model_config, data_boundaries), id_types_note(id_changes)]:
        if note:
            log(note)
    if not replay and at - data_end > STALE_DATA_DAYS * SECONDS_PER_DAY:
        log(
            f"DATA's last purchase is {(at - data_end) / SECONDS_PER_DAY:.0f} days before the moment scored: every "
            "household's history stops there (is the refresh, jobs.preprocess --state-only, running?)"
        )
    if replay:
        log(
            "at is inside the data: a replay of that moment (each household's purchases before it, the "
            "products' popularity and cycles recomputed from the purchases before it)"
            + (
                "; the model's training labels reach past it, so its weights know later purchases"
                if at < int(model_config["trained_through"])
                else ""
            )
        )
    in_a_task = not resolve_score_in(config, users.num_rows)
    plan = run_plan(config, at, inputs, users.num_rows, replay, scored_at=int(now))
    named = named_batches(users, plan["batch_size"])
    scored_at = plan["scored_at_epoch_s"]
    # The date's lock is held from here to the commit: a second run of the date is refused.
    run = None
    try:
        with PartitionRun(
            output,
            partition_name(run_date),
            run_id,
            log=log,
            overwrite=config.overwrite,
            continues=(lambda stage: keeps_a_part(plan, stage, named, config.k)) if config.resume else None,
            # The plan stays through the swap: a run killed while the commit fsyncs every part, or
            # between its renames, leaves a complete stage (or a journaled commit) that the next run
            # continues (or returns) by its plan, not scores again. Once this run's commit is in place
            # it goes, under the lock: a later run finds a plan in a committed partition only where a
            # roll-forward finished a dead run's commit, or a kill came between the swap and the
            # plan's removal (_finished_from_journal: the same plan's commit, returned).
            transient=(PLAN,),
        ) as run:
            finished = _finished_from_journal(run, plan, config, log)
            if finished is not None:
                run.leave_stage = False  # this run's stage holds nothing
                run.drop_transient()
                return finished
            if run.continued:
                at, scored_at = _continued_moment(run, plan, run_date, log)
            else:
                try:
                    write_json(os.path.join(run.stage, PLAN), plan)
                except OSError as e:  # a full disk, say: one line, as opening the run's stage is
                    run.leave_stage = False  # nothing in it
                    raise commit.output_error(output, f"write the run's plan {PLAN}", e) from None
            # A replay's product stats: one pass over every purchase (minutes at a billion), once
            # for the actors and the check, under the date's lock: a second run of the date that
            # started beside this one is refused before its own pass, not after it.
            replay_stats = None
            # A dead run's stage holding every part, not verified: nothing is ranked, so no pass
            # (minutes, and tens of GB, at a billion purchases; its k was checked by that run).
            rank_nothing = (
                run.continued and not config.verify and len(_kept_parts(run.stage, named, config.k)) == len(named)
            )
            if replay and not rank_nothing:
                try:
                    replay_stats = _replay_stats(config.data, at, log, in_a_task)
                    _check_k_known(config.k, replay_stats.lines, run_date)
                except BaseException:
                    run.leave_stage = bool(run.continued)  # a dead run's parts kept, this run's plan not
                    raise
            try:
                manifest = _score_into(
                    run.stage,
                    config,
                    model,
                    model_config,
                    users,
                    at,
                    run_date,
                    run_id,
                    started,
                    log,
                    replay_stats,
                    inputs,
                    scored_at=scored_at,
                    named=named,
                    batch_size=plan["batch_size"],
                )
                manifest["replay"] = replay
                manifest["data_end"] = pd.Timestamp(data_end, unit="s", tz="UTC").isoformat()
                # Readers merging this date with the earlier ones refuse the pair: said where a script looks.
                manifest["id_types_changed"] = id_changes
                if run.continued:
                    manifest["continued"] = run.continued
                if config.verify:
                    # Before the commit: a failing run must not replace (and so delete) the previous partition.
                    manifest["verify"] = _verified(run.stage, manifest, config, at, log, replay_stats)
            except (StageIncomplete, VerificationFailed, InputsChanged):
                run.leave_stage = False  # parts that are wrong, or of other inputs: never continued
                raise
            commit_error = None
            # At 10M users the fsync of every part and the old partition's removal take a while
            # under the date's lock, after the last progress line: said, not a silent 100%.
            log(f"committing {manifest['parts']:,} parts (fsync, swap) -> {run.final}")
            try:
                final = run.commit(manifest)
            except OSError as e:  # a full disk, say: the run's parts are whole, so they are kept or swapped in
                commit_error = e
    except KeyboardInterrupt:
        raise ScoringInterrupted(_interrupted_leaves(run, named, config, at, run_date)) from None
    except SystemExit as stop:  # SIGTERM (a scheduler, `ray job stop`): what it left, as for Ctrl-C
        if not stopped_by_sigterm(stop):
            raise
        raise ScoringInterrupted(_interrupted_leaves(run, named, config, at, run_date), by_sigterm=True) from None
    # Past the run's exit, which rolled a begun swap forward, or kept (or removed) the stage.
    if commit_error is not None:
        final = _commit_outcome(commit_error, output, config, at, run_id, log)
    if manifest["scored_in"] == KEPT_ONLY:
        log(f"done: nothing left to score, {manifest['users']:,} users' parts kept -> {final}")
    else:
        kept = manifest["users_kept"]
        scored = f"{manifest['users'] - kept:,} users scored" + (f", {kept:,} kept from the dead run" if kept else "")
        log(
            f"done: {scored}, {manifest['rows']:,} rows in {manifest['seconds']} s "
            f"({manifest['users_per_s']} users/s scored) -> {final}"
        )
    return manifest


def _interrupted_leaves(
    run: Optional[PartitionRun], named: Dict[str, pa.Table], config: BatchScoreConfig, at: int, run_date: str
) -> str:
    """What a run Ctrl-C stopped once it held the date (``run``; None: before its stage opened)
    leaves, past the run's exit: a commit its journal finished, or the parts kept (or removed)."""
    if run is None:
        return "nothing was scored: rerun the same command"
    if _committed_by(run.final, run.run_id):
        return f"its commit had begun and was finished from its journal: {run.final}"
    if os.path.exists(commit.journal_path(run.output, run.partition)):  # the roll forward failed too
        return f"nothing committed, {_SWAP_JOURNALED}"
    return "nothing committed, " + _parts_left(run.stage, named, config, at, run_date)


def _committed_by(final: str, run_id: str) -> bool:
    """Whether the partition at ``final`` is run ``run_id``'s commit (its swap finished, from its
    journal where the run itself did not)."""
    committed = commit.read_committed(final)
    return committed is not None and committed.get("run_id") == run_id


def _continued_moment(run: PartitionRun, plan: Dict, run_date: str, log: Callable[[str], None]) -> Tuple[int, int]:
    """(at, scored_at) of the dead run ``run`` continues, both epoch seconds: its moment (a run at
    ``now`` continues a dead ``now`` run of its date at that run's moment) and its start, so that
    every row of the partition carries one moment and one ``scored_at``. A moment not this run's own
    is said."""
    dead = read_json(os.path.join(run.stage, PLAN))
    at = int(dead["at_epoch_s"])
    scored_at = int(dead.get("scored_at_epoch_s", plan["scored_at_epoch_s"]))
    if at != plan["at_epoch_s"]:
        log(
            f"--at now continues the dead run {run.continued} of run_date={run_date} at its moment "
            f"{pd.Timestamp(at, unit='s', tz='UTC').isoformat()}, not "
            f"{pd.Timestamp(plan['at_epoch_s'], unit='s', tz='UTC').isoformat()}: a partition is of one moment "
            "(--no-resume starts afresh)"
        )
    return at, scored_at


def _finished_from_journal(
    run: PartitionRun, plan: Dict, config: BatchScoreConfig, log: Callable[[str], None]
) -> Optional[Dict]:
    """The manifest of the partition a dead run's commit, finished from its journal as ``run``
    opened (:attr:`PartitionRun.recovered`) or before it (by another date's run or a reader:
    its ``_plan.json``, which stays through the swap, is still there; a run whose own commit
    completes removes it under the lock), committed of this run's plan: nothing is left to score.
    None, said, where this run scores the date again: no such commit, another plan,
    ``--no-resume``, or a ``--verify`` that partition's run did not pass."""
    finished, how = run.recovered, "was finished from its journal"
    if finished is None and os.path.exists(os.path.join(run.final, PLAN)):
        finished = run.final
        how = "was committed before this run (by another date's run or a reader, or its run killed after its swap)"
    if finished is None:
        return None
    committed = commit.read_committed(finished)
    if not config.resume:
        why = "--no-resume"
    elif committed is None or not continuable(plan, finished):
        why = "it is of another plan"
    elif config.verify and not (committed.get("verify") or {}).get("ok"):
        why = "its run did not pass a --verify"
    else:
        log(f"the commit the dead run {committed['run_id']} left {how}, of this run's plan: nothing is scored again")
        return committed
    log(f"the commit the dead run left {how}; this run scores the date again ({why})")
    return None


def _commit_outcome(
    error: OSError, output: str, config: BatchScoreConfig, at: int, run_id: str, log: Callable[[str], None]
) -> str:
    """The partition's path when the commit that raised ``error`` was finished all the same (from
    its journal, on the run's way out); otherwise :class:`ScoringFailed`, one line saying where
    the scored parts are and what a rerun does with them."""
    run_date = run_date_of(at)
    final = commit.partition_path(output, partition_name(run_date))
    if _committed_by(final, run_id):
        log(f"the commit raised ({error}) and was finished from its journal")
        return final
    cause = f"{type(error).__name__}: {error}"
    if os.path.exists(commit.journal_path(output, partition_name(run_date))):
        kept = _SWAP_JOURNALED
    else:
        kept = _scored_parts_left(config, at, run_date, "commit them")
    raise ScoringFailed(f"the commit of run_date={run_date} failed ({cause}); nothing committed, {kept}")


def _scored_parts_left(config: BatchScoreConfig, at: int, run_date: str, to: str) -> str:
    """What became of a run's scored parts when what follows the scoring failed: kept for the same
    command ``to`` do the rest, or removed (``--no-resume``)."""
    if config.resume:
        return "every part is scored and kept: " + rerun_to(to, config.at, at, run_date)
    return _PARTS_REMOVED


def _verified(
    stage: str,
    manifest: Dict,
    config: BatchScoreConfig,
    at: int,
    log: Callable[[str], None],
    stats: Optional[ProductStats] = None,
) -> Dict:
    """:func:`ncf.batch.verify.verify_parts` of the staged run, where its scoring ran: a run of
    actors verifies in a task placed as one of them (the sampled users' ranking loads the whole
    model, about 5 GiB at 10M x 1M, which a job's driver on the head must not hold; its progress
    lines go to the job's log through Ray's, not to ``log``). Raises :class:`VerificationFailed`,
    :class:`InputsChanged` where MODEL or DATA changed since the run started, or
    :class:`ScoringFailed` where the checks could not run (the parts kept for a rerun, unless
    ``--no-resume``)."""
    # Another night, other households: a seed of the run's id, recorded in the report.
    seed = zlib.crc32(str(manifest["run_id"]).encode())
    on_a_worker = not resolve_score_in(config, manifest["users"])
    memory = actor_memory(manifest["model"], manifest["users"]) if on_a_worker else 0
    if on_a_worker and manifest["scored_in"] != "actors":
        # Every part kept from a dead run, so no pool was sized: a task no node of the job's own
        # cluster can place would wait for ever, the date's lock held (refused, as actors are).
        # Placed on CPUs whatever --gpu says: --gpu yes refused it where the autoscaler had
        # removed the idle GPU nodes, and every rerun of the date the same way.
        _actor_resources("no", 1, config.actor_cpus, 1, memory)
    log(
        f"verifying the {manifest['parts']:,} staged parts before the commit (every row read, "
        f"{config.verify:,} sampled users ranked again"
        + (", in a task placed as a scoring actor)" if on_a_worker else ")")
    )
    check = dict(sample=config.verify, seed=seed, stats=stats)
    try:
        if on_a_worker:
            import ray

            task = ray.remote(verify_parts).options(num_cpus=config.actor_cpus, memory=memory, max_retries=0)
            report = ray.get(task.remote(stage, manifest, manifest["data"], log=_log, **check))
        else:
            report = verify_parts(stage, manifest, manifest["data"], log=log, **check)
    except Exception as e:  # not KeyboardInterrupt, nor SystemExit (SIGTERM)
        # MODEL or DATA swapped in since the run started: what the sample's load raised is theirs.
        changed = _inputs_changed(config, manifest)
        if changed is not None:
            raise changed from None
        bad_input = input_error_in(e)  # MODEL or DATA refused as the sample's ranking loads them
        if bad_input is not None:
            raise bad_input from None
        kind, line = remote_cause(e)
        kept = _scored_parts_left(config, at, manifest["run_date"], "verify and commit them")
        raise ScoringFailed(
            f"the verification could not run ({kind}: {line or 'no message'}); nothing committed, "
            f"{kept}{_traceback_kept(e)}"
        ) from e
    if not report["ok"]:
        # MODEL or DATA swapped in since the run started, after the sample's load: theirs to say
        # ("rerun"), not the scoring's.
        raise _inputs_changed(config, manifest) or VerificationFailed(report)
    log(
        f"verified before the commit: {report['sampled_equal_to_recommend']} sampled users equal a fresh ranking"
        + (", their reasons too" if "sampled_reasons_equal_to_rank" in report else "")
    )
    return report


def _inputs_changed(config: BatchScoreConfig, manifest: Dict) -> Optional[InputsChanged]:
    """Whether MODEL or DATA changed since the run read them (:func:`changed_inputs`)."""
    return changed_inputs(config.model, config.data, tuple(manifest["inputs"])) if manifest["inputs"] else None


def _replay_stats(data: str, at: int, log: Callable[[str], None], in_a_task: bool = False) -> ProductStats:
    """The products' stats at the start of ``at``'s day (``at`` inside the data: a replay),
    computed once for every actor and the verification: by the driver where it scores, else in a
    Ray task asking for the memory the pass holds (56 bytes a purchase: tens of GB at a billion,
    which on the head beside GCS and Serve's proxy had no reservation, and Linux's OOM killer,
    not a MemoryError, would have chosen what to kill), as preprocessing's stats tasks do."""
    started = time.time()
    where = " in a Ray task" if in_a_task else ""
    day, run_date = day_of(at), run_date_of(day_of(at))
    log(f"computing the products' stats as of {run_date} (a replay){where}: one pass over every purchase")
    try:
        if in_a_task:
            stats = _stats_in_a_task(data, day, log)
        else:
            stats = RankingState.load(data).as_of(day).stats
    except Exception as e:  # noqa: BLE001 - the pass holds memory in proportion to the purchases
        if not _out_of_memory_or_io(e):
            raise
        kind, line = remote_cause(e)
        raise ScoringFailed(
            f"the products' stats as of {run_date} (a replay) could not be computed "
            f"({kind}: {line or 'no message'}); nothing was written{_traceback_kept(e)}"
        ) from e
    log(f"products' stats as of {run_date} computed once, in {time.time() - started:.1f} s")
    return stats


def _stats_in_a_task(data: str, day: int, log: Callable[[str], None]) -> ProductStats:
    """:meth:`ProductStats.compute` at ``day`` in a Ray task asking for what the pass holds, as
    preprocessing's stats tasks do (:func:`ncf.data.preprocess.stats_in_tasks`); not retried:
    a task the OOM killer took is the run's one line, not the same pass again."""
    from ncf.data.preprocess import stats_in_tasks

    state_dir = layout.user_state_dir(data)
    purchases = len(UserStates.load(state_dir).products)
    category = Catalog.of(Vocabulary.load(os.path.join(layout.vocab_dir(data), "products.parquet"))).category
    return stats_in_tasks(state_dir, purchases, category, [day], log=log, max_retries=0)[day]


def _out_of_memory_or_io(error: BaseException) -> bool:
    """A pass that ran out of memory (MemoryError; Ray's OutOfMemoryError for a task its memory
    monitor killed; a worker the kernel's OOM killer took, or its node lost) or could not read
    DATA: the run's one line, not a traceback."""
    from ray.exceptions import NodeDiedError, ObjectLostError, OutOfMemoryError, WorkerCrashedError

    lost = (OutOfMemoryError, WorkerCrashedError, NodeDiedError, ObjectLostError)
    return isinstance(error, lost) or raised_within(error, (MemoryError, OSError)) is not None


def _score_into(
    stage: str,
    config: BatchScoreConfig,
    model: str,
    model_config: Dict,
    users: pa.Table,
    at: int,
    run_date: str,
    run_id: str,
    started: float,
    log: Callable[[str], None],
    replay_stats: Optional[ProductStats] = None,
    inputs: Optional[Tuple[str, str]] = None,
    scored_at: Optional[int] = None,
    *,
    named: Dict[str, pa.Table],
    batch_size: int,
) -> Dict:
    """Scores every user into the parts of ``stage`` and checks them; returns the manifest.
    ``inputs``: MODEL's and DATA's fingerprints at the start (:func:`input_fingerprints`).
    ``scored_at``: what the rows and the manifest say (epoch seconds; None: ``started``; a
    continued run's is the dead run's, whose parts it keeps). ``named``: the run's batches of
    ``batch_size`` users (:func:`named_batches` of ``users``: the plan's, whose names a rerun
    continues)."""
    scored_at = int(started) if scored_at is None else scored_at
    left = sum(1 for name in os.listdir(stage) if name in named)
    if left:
        log(f"reading the {left:,} parts a dead run of this date left, to keep the whole ones")
    kept = _kept_parts(stage, named, config.k)
    blocks = [b for name, b in named.items() if name not in kept]
    kept_users = sum(part["users"] for part in kept.values())
    if kept:
        log(
            f"continuing a dead run of this date (its moment {pd.Timestamp(at, unit='s', tz='UTC').isoformat()}, "
            f"the same MODEL, DATA and settings): {len(kept)} of {len(named)} parts kept "
            f"({kept_users:,} users), {len(blocks)} to score (--no-resume starts afresh)"
        )
    in_driver = not blocks or resolve_score_in(config, users.num_rows)  # nothing left: no actors to start
    if in_driver:
        actors, gpus = 1, _driver_gpu(config.gpu)
    else:
        memory = actor_memory(model, users.num_rows)
        actors, gpus = _actor_resources(config.gpu, config.actors, config.actor_cpus, len(blocks), memory)
    # Nothing left to score: no model to compile (a driver without a compiler would refuse it).
    compile_model = bool(blocks) and resolve_compile(
        config.compile, -(-(users.num_rows - kept_users) // actors), bool(gpus)
    )
    log(
        f"{users.num_rows:,} users, k={config.k}, at {pd.Timestamp(at, unit='s', tz='UTC').isoformat()}, "
        f"model {model_config['version']}: "
        + (f"{len(blocks)} batches of {batch_size} " if blocks else f"nothing to score, scored_in {KEPT_ONLY!r}")
        + (("in the driver" if in_driver else f"on {actors} actor(s)") if blocks else "")
        + ((" on its GPU" if in_driver else " with a GPU each") if gpus else "")
        + (", the model compiled" + ("" if in_driver else " in each") + " (torch.compile)" if compile_model else "")
        + (", each row with its reason" if config.explain else "")
    )
    scorer_kwargs = {
        "model": model,
        "data": config.data,
        "stage": stage,
        "k": config.k,
        "at": at,
        "scored_at": scored_at,
        "model_version": model_config["version"],
        "use_gpu": bool(gpus),
        "compile_model": compile_model,
        "replay_stats": replay_stats,
        "explain": config.explain,
        "inputs": inputs,
    }
    try:
        # Inside: Ray Data may fail before the first batch too (the blocks put into a full object store).
        if not blocks:
            results = iter(())
        elif in_driver:
            results = _scored_here(blocks, scorer_kwargs)
        else:
            results = _scored_by_actors(blocks, scorer_kwargs, batch_size, actors, gpus, config.actor_cpus, memory)
        reported, steady = _collect(results, users.num_rows - kept_users, config.progress_every_s, log)
        reported += list(kept.values())
    except Exception as e:  # not KeyboardInterrupt, nor SystemExit (SIGTERM): those stop the job as they are
        changed = inputs_changed_in(e)
        if changed is None and inputs is not None:
            # An actor that failed loading a MODEL or DATA swapped in meanwhile raises what the new
            # one makes it raise (a refusal, a missing file): the driver, which read both at the
            # start, tells the run's inputs changed (exit 1, nothing kept) from bad input or a failure.
            changed = changed_inputs(model, config.data, inputs)
        if changed is not None:
            raise changed from None  # its one line, not the actor's traceback Ray wraps it in
        bad_input = input_error_in(e)  # an actor's own refusal (OUT not mounted on its node): one line, exit 2
        if bad_input is not None:
            raise bad_input from None
        raise _failed_midway(e, stage, named, config, at, run_date) from e
    log(f"checking the stage's {len(reported):,} parts (their row counts)")
    rows = _verify_stage(stage, users.num_rows, config.k, reported)
    seconds = time.time() - started
    manifest = {
        "users": users.num_rows,
        # Of them, those whose parts a dead run of this plan left whole: kept, not scored again.
        "users_kept": kept_users,
        "rows": rows,
        "k": config.k,
        "explain": config.explain,
        "parts": len(reported),
        "cold_start_users": sum(r["cold_start_users"] for r in reported),
        "model_version": model_config["version"],
        "model": model,
        "data": config.data,
        # MODEL's and DATA's fingerprints at the start: verify_partition tells a DATA changed since.
        "inputs": list(inputs) if inputs else None,
        "at": pd.Timestamp(at, unit="s", tz="UTC").isoformat(),
        "at_epoch_s": at,
        "run_date": run_date,
        "run_id": run_id,
        "scored_at": pd.Timestamp(scored_at, unit="s", tz="UTC").isoformat(),
        # Every part kept from the dead run: this run scored nothing, in the driver or in actors.
        "scored_in": KEPT_ONLY if not blocks else "driver" if in_driver else "actors",
        "seconds": round(seconds, 1),
        # Scored by this run; none (null) where it scored nothing: no rate to report.
        "users_per_s": round((users.num_rows - kept_users) / max(seconds, 1e-9), 1) if blocks else None,
        "steady_users_per_s": round(steady, 1) if blocks else None,
    }
    return manifest


def resolve_score_in(config: BatchScoreConfig, num_users: Optional[int] = None) -> bool:
    """Whether this run scores in the driver (``config.score_in``: see BatchScoreConfig), which
    then needs no Ray; ``num_users``: DATA's (read when not given)."""
    if config.score_in != "auto":
        return config.score_in == "driver"
    if config.pool_settings_given or config.gpu == "yes":
        return False
    if num_users is None:
        num_users = count_users(config.data)
    return num_users <= DRIVER_MAX_USERS


def _driver_gpu(setting: str) -> int:
    """1 when the driver scores on its own CUDA device: with ``yes`` (:func:`check_config` refuses
    it without one), not ``auto``: on an H200 the job in the driver took 4.2 s on the GPU against
    3.6 s on its host's 16 cores for Complete Journey (BENCHMARKS.md "GPU"). The cluster's GPUs
    are the actors'."""
    import torch

    return int(setting == "yes" and torch.cuda.is_available())


def _scored_here(blocks: List[pa.Table], scorer_kwargs: Dict) -> Iterator[Dict]:
    """Each block scored by one :class:`ScoreBatch` in this process: the actors' code, no actors."""
    scorer = ScoreBatch(**scorer_kwargs)
    for block in blocks:
        yield {key: value[0] for key, value in scorer(block).items()}


def _scored_by_actors(
    blocks: List[pa.Table],
    scorer_kwargs: Dict,
    batch_size: int,
    actors: int,
    gpus: int,
    cpus_per_actor: float,
    memory_per_actor: int,
) -> Iterator[Dict]:
    """The blocks scored by a Ray Data pool of ``actors`` :class:`ScoreBatch` actors, one row a
    block, each actor placed by its CPUs and its memory (:func:`actor_memory`)."""
    import ray

    # Ray 2.60's map_batches has no named parameter for max_restarts (below): ray_remote_args is
    # its only route, which Ray reports as deprecated on every run. Silenced here only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        results = ray.data.from_arrow(blocks).map_batches(
            ScoreBatch,
            fn_constructor_kwargs=scorer_kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus,
            memory=memory_per_actor,
            # No actor restarts (Ray Data's default is endless ones). Ray Data passes each actor's
            # constructor arguments through the object store, where a restart may not find them
            # (ray-project/ray#53727; Ray logs a core_worker error for every actor it creates so),
            # and an actor that dies loading the model (out of memory) would restart forever. A dead
            # actor fails the run instead: nothing is committed, and a rerun of the date keeps the
            # whole parts written so far (continuable) and scores the others.
            max_restarts=0,
        )
    return results.iter_rows()


def _collect(
    results: Iterable[Dict], total_users: int, every_s: float, log: Callable[[str], None]
) -> tuple[List[Dict], float]:
    """Runs the scoring, printing progress as batches finish; returns their count rows and the
    steady rate (users/s after the first batch, i.e. without actor start-up)."""
    reported, done, started = [], 0, time.time()
    first = last = None
    for row in results:
        reported.append(
            {
                "part": str(row["part"]),
                "users": int(row["users"]),
                "rows": int(row["rows"]),
                "cold_start_users": int(row["cold_start_users"]),
            }
        )
        done += int(row["users"])
        now = time.time()
        first = first or (now, done)
        if last is None or now - last >= every_s or done == total_users:
            rate = done / max(now - started, 1e-9)
            log(
                f"progress: {done:,}/{total_users:,} users "
                f"({100 * done / max(total_users, 1):.1f}%), {rate:.1f} users/s"
            )
            last = now
    steady = (done - first[1]) / max(time.time() - first[0], 1e-9) if first and done > first[1] else 0.0
    return reported, steady
