"""Ray Train's ``train_loop_per_worker``: fits AdvancedNCF on the training lists.

Each worker reads its shard of the lists of the run's cutoffs (``get_dataset_shard("train")``),
trains the (sharded, fused-kernel) model with the logQ-corrected loss, and after every epoch
validates (rank 0: full ranking of the validation weeks through the ranking path), reports a
checkpoint and stops early when validation stops improving. A refit run trains a fixed number of
epochs and does not validate: its labels cover the validation weeks.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from ncf.data import layout
from ncf.data.examples import listed_rows, lists_digest
from ncf.data.features import FEATURES_VERSION, Catalog
from ncf.data.vocab import Vocabularies
from ncf.device import check_gpu_usable
from ncf.evaluate.evaluation import full_ranking, model_fns, point_in_time_period, sample_users
from ncf.model.advanced_ncf import model_from_weights
from ncf.model.batch import Batch
from ncf.model.config import ModelConfig
from ncf.model.files import BEST_VAL_METRIC, DIVERGED_SCORE, VAL_DIVERGED, VAL_METRIC, read_trained_rows
from ncf.model.integrity import vocab_digest
from ncf.rank.ranker import Ranker, ScoresNotANumber
from ncf.rank.state import EmbeddingRows, RankingState
from ncf.splits import VAL, VALIDATED
from ncf.train import checkpoint as ckpt
from ncf.train.config import TrainConfig, check_refit_epochs
from ncf.train.sharding import (
    any_across_ranks,
    build_model,
    collective_device,
    full_optimizer_state,
    full_state_dict,
    load_full_state_dict,
    load_optimizer_state,
    sharded_table_count,
    summed_across_ranks,
    world,
)

StepHook = Callable[[int, int, int], None]  # (rank, epoch, step): fault drills inject failures here


def log(message: str) -> None:
    # To the process's own stdout: Ray Train's patched print tees a plain print to its logger
    # and to the worker's wrapped stdout, so every line reached the driver twice.
    print(f"[train] {message}", file=sys.__stdout__, flush=True)


@dataclass
class Worker:
    """What one worker sets up once: its model, optimizer, data and validation."""

    cfg: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    model_config: ModelConfig
    model: torch.nn.Module
    optimizer: object
    catalog: Catalog
    vocabs: Vocabularies
    trained_through: int
    rows_trained_before: int
    vocab_sha256: str  # the vocabularies the tables' rows index (ncf.model.integrity.vocab_digest)
    lists_sha256: str = ""  # the lists it trains on (ncf.data.examples.lists_digest)
    listed_rows: Optional[tuple] = None  # (users, products) masks of what the run's lists hold
    # With capped epochs, (users, products) masks of what the batches trained so far held: the
    # lists after the cap are not read, so their rows are not trained either.
    read_rows: Optional[tuple] = None
    validation: Optional[tuple] = None  # (state as of the validation start, period, households)
    said_validation_on_cpu: bool = False  # one worker whose GPU cannot hold a second copy: said once


def worker_threads(cfg: TrainConfig, world_size: int, node_cpus: float = 0) -> int:
    """Torch threads of each worker: ``cfg.torch_threads``, or the CPUs this process may run on
    (:func:`usable_cpus`, at most ``node_cpus``, the node's CPUs as Ray counts them) shared among
    the ``world_size`` workers on it (the local world size: a run across nodes shares each node's
    cores among that node's workers only). Ray still keeps a CPU of its accounting for Ray Data's readers (see
    ``worker_resources``); their work is a few seconds per epoch, so leaving them a core's worth of
    threads idle cost one worker on 2 cores 13% of its steady rate (bench.train_throughput).
    Never more than that share (a sweep sizes ``torch_threads`` from the whole cluster)."""
    cpus = usable_cpus()
    if node_cpus >= 1:  # a container's CPU quota, which Ray reads from its cgroup, or the node's --num-cpus
        cpus = min(cpus, int(node_cpus))
    share = max(1, cpus // world_size)
    return min(cfg.torch_threads, share) if cfg.torch_threads else share


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a container's cpuset), not
    ``os.cpu_count()``, the host's (a 4-CPU pod on a 64-core host ran 64 threads per worker)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def ray_node_cpus() -> float:
    """The CPUs Ray counts on this worker's node (0 when it cannot tell)."""
    import ray

    try:  # a restart after a lost node asks the GCS while it settles: no cap then, not a failed setup
        node = ray.get_runtime_context().get_node_id()
        return next((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["NodeID"] == node), 0.0)
    except Exception:  # noqa: BLE001
        return 0.0


def setup_worker(cfg: TrainConfig) -> Worker:
    import ray.train.torch

    rank, world_size = world()
    torch.manual_seed(init_seed(cfg.seed, rank))
    torch.set_num_threads(worker_threads(cfg, ray.train.get_context().get_local_world_size(), ray_node_cpus()))
    if ray.get_gpu_ids():  # else Ray Train's device falls back to the CPU beside an NCCL group
        check_gpu_usable("train with --gpu no", training=True)
    device = ray.train.torch.get_device()
    stats = layout.DataStats(cfg.data)
    vocab_sha256 = vocab_digest(cfg.data)
    vocabs = Vocabularies.load(layout.vocab_dir(cfg.data))
    model_config = cfg.model_config(vocabs.sizes())
    model, optimizer = build_model(model_config, device, cfg.learning_rate)
    if rank == 0:
        log(f"{sharded_table_count(model)} embedding tables on fused kernels across {world_size} worker(s)")
    catalog = Catalog.of(vocabs.products)
    trained_through = max(cfg.cutoffs) + stats.horizon_seconds  # where this run's labels end
    # No list holds a product or a household unknown at its cutoff: those first seen in the last
    # label window were in no list, and rank with the trained unknown row, not their untouched own.
    rows_trained_before = max(cfg.cutoffs)
    worker = Worker(
        cfg,
        rank,
        world_size,
        device,
        model_config,
        model,
        optimizer,
        catalog,
        vocabs,
        trained_through,
        rows_trained_before,
        vocab_sha256,
        lists_digest(cfg.data, cfg.cutoffs),
    )
    marks = marks_read_rows(cfg, world_size)
    if rank == 0 and cfg.run == VALIDATED:
        state = RankingState.load(cfg.data).as_of(stats.boundaries["val_start"])
        _, period = point_in_time_period(state, VAL, stats.boundaries)
        worker.validation = (state, period, sample_users(period.users, cfg.val_users or None))
        # Validation ranks as the saved model will: rows no list holds are never trained (where
        # the rows read are recorded, those replace these before the first validation: no scan).
        if not marks:
            sizes = (model_config.num_users, model_config.num_products)
            worker.listed_rows = listed_rows(cfg.data, cfg.cutoffs, *sizes)
    if marks:
        users, products = np.zeros(model_config.num_users, bool), np.zeros(model_config.num_products, bool)
        users[0] = products[0] = True  # the unknown rows, trained by the unknown-row draws
        worker.read_rows = (users, products)
    return worker


def marks_read_rows(cfg: TrainConfig, world_size: int) -> bool:
    """Whether a run records the rows its batches held (``Worker.read_rows``), for those the lists
    held but no batch read to rank with the unknown row: capped epochs stop early, and several
    workers' equal shares leave up to N-1 lists of each epoch out (rows only they hold kept their
    random initial vectors, and were exported as trained)."""
    return bool(cfg.max_steps_per_epoch) or world_size > 1


def init_seed(seed: int, rank: int) -> int:
    """The torch RNG seed a rank builds its model with: the run's own on rank 0 (a one-worker run
    as before), another on each other rank. Each rank initialises the embedding shards it holds
    from it: with one seed for all, tables of one shape on two ranks started equal (after an
    epoch of 2 workers, user_mf and user_mlp correlated 0.94). The dense layers are rank 0's on
    every rank: DDP broadcasts them when DistributedModelParallel wraps the model."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def epoch_seeds(seed: int, rank: int, epoch: int) -> tuple[int, int]:
    """Seeds of one rank's epoch: (the global torch RNG's, for dropout; the unknown-row draws').
    Derived from the epoch rather than continued from streams seeded at setup: a run resumed
    from a checkpoint starts those streams again, and its later epochs repeated the first one's
    draws, so it trained other weights than an uninterrupted run of the same seed."""
    dropout_seed, unknown_rows_seed = np.random.SeedSequence([seed, rank, epoch]).generate_state(2)
    return int(dropout_seed), int(unknown_rows_seed)


def training_step(model: torch.nn.Module, optimizer, batch: Batch, loss_fn: torch.nn.Module) -> torch.Tensor:
    """One optimizer step on ``batch`` (on the model's device); returns the loss. bf16 autocast on
    CUDA; the logQ-corrected loss, so the model learns the probability of a purchase, not the
    sampler's odds."""
    on_cuda = batch.label.device.type == "cuda"
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=on_cuda):
        logits = model(batch, return_logits=True)
    loss = loss_fn(logits.float() - batch.log_q, batch.label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_epoch(w: Worker, shard, epoch: int, generator: torch.Generator, step_hook: Optional[StepHook]) -> Dict:
    """One pass over this worker's shard; returns the epoch's training metrics."""
    w.model.train()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started, seen, lists, loss_sum, steps = time.time(), 0, 0, 0.0, 0
    diverged_at = 0  # this rank's first step whose loss was not a number
    warm_at, warm_seen = None, 0
    batches = shard.iter_batches(
        batch_size=w.cfg.batch_size,
        batch_format="pyarrow",
        local_shuffle_buffer_size=w.cfg.shuffle_buffer or None,
        local_shuffle_seed=w.cfg.seed + epoch,
        prefetch_batches=4,
    )
    for table in batches:
        batch = training_batch(w, table, generator).to(w.device)
        loss = training_step(w.model, w.optimizer, batch, loss_fn)
        seen += batch.num_candidates
        lists += table.num_rows
        step_loss = float(loss.detach())
        loss_sum += step_loss
        steps += 1
        if not diverged_at and not math.isfinite(step_loss):
            diverged_at = steps
            log(f"rank {w.rank} epoch {epoch} step {steps}: the loss is {step_loss} (diverged)")
        if steps == 1:  # the input pipeline's start and the first step's allocations end here
            warm_at, warm_seen = time.time(), seen
        if steps % 100 == 0:
            rate = seen / (time.time() - started)
            log(f"rank {w.rank} epoch {epoch} step {steps}: loss {loss_sum / steps:.4f}, {rate:,.0f} candidates/s")
        if step_hook is not None:
            step_hook(w.rank, epoch, steps)
        if w.cfg.max_steps_per_epoch and steps >= w.cfg.max_steps_per_epoch:
            if w.rank == 0 and epoch == 1:
                log(
                    f"epochs capped at {steps} steps (--max-steps-per-epoch): the lists after them are not read, "
                    "and households and products only they hold rank with the unknown row (for tests and "
                    "quick sweeps, not a model to deploy)"
                )
            break
    if w.read_rows is not None:
        w.read_rows = tuple(any_across_ranks(mask) for mask in w.read_rows)
    ended = time.time()
    elapsed = max(ended - started, 1e-9)
    # Every rank trained its own shard: the loss is the mean over all ranks' steps and the rates
    # count all ranks' candidates (rank 0's alone, scaled by the world size, were not the run's).
    all_loss_sum, all_steps, all_seen, all_warm_seen, all_lists, diverged_ranks = summed_across_ranks(
        [loss_sum, steps, seen, warm_seen, lists, float(diverged_at > 0)]
    )
    metrics = {
        "epoch": epoch,
        "world_size": w.world_size,
        "sharded_tables": sharded_table_count(w.model),
        "train_loss": all_loss_sum / max(all_steps, 1),
        "examples_per_s": all_seen / elapsed,
        "lists": int(all_lists),  # the lists the epoch read, all ranks'
        "epoch_seconds": elapsed,
    }
    if warm_at is not None:
        metrics["first_step_seconds"] = warm_at - started
    if steps > 1:
        metrics["steady_examples_per_s"] = (all_seen - all_warm_seen) / max(ended - warm_at, 1e-9)
    metrics["steps"] = steps  # this rank's: every rank steps its equal share
    if diverged_ranks:
        metrics[LOSS_DIVERGED] = 1.0  # every rank's: each stops at this epoch's end
    return metrics


# An epoch's metric, 1.0 where a step's loss was not a number on any rank: its weights are not
# numbers from then on (one NaN gradient reaches the tables, the dense layers and their optimizer
# states), so more epochs train nothing. DIVERGED_EPOCH: the state's record of that epoch.
LOSS_DIVERGED = "loss_diverged"
DIVERGED_EPOCH = "diverged_epoch"


def diverged_epoch(state: Dict) -> Optional[int]:
    """The epoch a run's ``state`` (a checkpoint's) diverged in, or None: its record, or a history
    row's flag (checkpoints of this code's first version, which recorded no epoch)."""
    if state.get(DIVERGED_EPOCH):
        return int(state[DIVERGED_EPOCH])
    return next((int(row["epoch"]) for row in state.get("history") or () if row.get(LOSS_DIVERGED)), None)


def trains_on(w: Worker, state: Dict) -> bool:
    """Whether the run has an epoch left: within ``--epochs`` and ``--patience``, and not diverged
    (a resume with a higher ``--patience`` trained NaN weights again)."""
    return state["epoch"] < w.cfg.epochs and state["stale"] < w.cfg.patience and diverged_epoch(state) is None


def say_diverged(w: Worker, state: Dict, epoch: int) -> None:
    """The line of a run whose ``epoch`` diverged (:data:`LOSS_DIVERGED`), which ends there: a
    validated run keeps its best epoch; a refit, whose last epoch is its model, has none to export
    (:func:`ncf.train.trainer.refuse_diverged` fails it then, from the epoch's report, once:
    raised in the workers, Ray Train retried the same epoch, with the same seeds and rate, twice;
    resumed, the run ends there again)."""
    if w.rank != 0:
        return
    kept = f"its best epoch stays {state['best_epoch']}" if state.get("best_epoch") else "no epoch to keep"
    rate = f"learning rate {w.cfg.learning_rate:g}"
    log(
        f"epoch {epoch} diverged (its loss is not a number at {rate}): training stops here, "
        + (kept if w.cfg.run == VALIDATED else "nothing to export")
    )


def training_batch(w: Worker, table, generator: torch.Generator) -> Batch:
    """The batch a step trains on, from a table of training lists (on the CPU): its history cut to
    the model's length and a share of its households and candidates swapped for the unknown row;
    with capped epochs, the rows it trains are marked in ``w.read_rows``."""
    share = w.cfg.unknown_share
    batch = Batch.from_arrow(table, w.catalog).with_history_length(w.model_config.history_length)
    batch = batch.with_unknown_rows(generator, share, share)
    if w.read_rows is not None:  # after the swap: a row swapped out in its only appearance was not trained
        mark_rows(w.read_rows, batch)
    return batch


def mark_rows(rows: tuple, batch: Batch) -> None:
    """Marks in ``rows`` ((users, products) masks) the households, candidates and history
    products of ``batch``: the embedding rows its step trains."""
    users, products = rows
    users[batch.user.numpy()] = True
    products[batch.product.numpy()] = True
    products[batch.history.numpy().ravel()] = True


def validate(w: Worker, weights: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Full-ranking metrics of ``weights`` on the sampled validation households (rank 0)."""
    state, period, users = w.validation
    model = model_from_weights(w.model_config, weights, validation_device(w, weights))
    rows = EmbeddingRows.between(w.vocabs, state.vocabs, w.rows_trained_before, w.listed_rows)
    # Exact MF lists for the few sampled households: a large catalog's HNSW index is built when
    # the model is saved, and building one every epoch would take minutes at 1M products.
    rank_many, _ = model_fns(Ranker(model, state, rows, exact_mf=True))
    started = time.time()
    # Silent otherwise between the epoch's last step and its line: hours with --val-users 0 at 10M.
    log(f"rank {w.rank}: validating on {len(users):,} households (full ranking)")
    try:
        metrics = full_ranking(None, period, users, rank_many=rank_many, progress=lambda m: log(f"rank {w.rank}: {m}"))
    except ScoresNotANumber as diverged:
        # Never the best epoch (DIVERGED_SCORE > best is False, best starting there), nor a trial's
        # plausible score.
        log(f"rank {w.rank}: validation: {diverged} (did training diverge?): the epoch has no validation score")
        return {VAL_METRIC: DIVERGED_SCORE, VAL_DIVERGED: 1.0}
    log(f"rank {w.rank}: validated in {time.time() - started:.0f} s")
    return {f"val_{k}": float(v) for k, v in metrics.items()}


# The room a whole copy of the weights needs on the GPU beyond their bytes (the ranking's own
# activations and the allocator's rounding).
VALIDATION_GPU_HEADROOM = 1.2


def validation_device(w: Worker, weights: Dict[str, torch.Tensor]) -> torch.device:
    """Where rank 0 ranks the validation households: its own device with one worker, where the
    GPU's free memory holds a second, whole copy of ``weights`` (the planner lets the tables fill
    85% of it: a run that fits training ran out of memory at its first validation, retried twice);
    the CPU otherwise, and with several workers, whose tables are sharded, perhaps because one GPU
    cannot hold them. On the CPU the model takes the gathered tensors themselves, no copy."""
    if w.world_size > 1:
        return torch.device("cpu")
    if w.device.type == "cuda":
        # The allocator's cache of training's activations back to the driver first: free, not held.
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(w.device)
        needed = sum(t.numel() * t.element_size() for t in weights.values())
        if free < VALIDATION_GPU_HEADROOM * needed:
            if not w.said_validation_on_cpu:
                log(
                    f"validating on the CPU: the GPU has {free / 2**30:.1f} GiB free, a whole copy of the model "
                    f"needs {VALIDATION_GPU_HEADROOM * needed / 2**30:.1f} GiB"
                )
                w.said_validation_on_cpu = True
            return torch.device("cpu")
    return w.device


def report_checkpoint(w: Worker, state: Dict, metrics: Dict, weights: Optional[Dict]) -> None:
    """Reports the epoch's metrics with a checkpoint (rank 0 writes it; every rank reports)."""
    import ray.train

    optimizer_state = full_optimizer_state(w.optimizer)  # collective: every rank takes part
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            ckpt.write_checkpoint(tmp, weights, optimizer_state, state, w.read_rows)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=ckpt.persist_durably)


def report_again(w: Worker, state: Dict) -> None:
    """Reports a run resumed after its last epoch (stopped between that epoch's checkpoint and its
    report reaching the caller: a sweep's Ctrl-C) once more, its last epoch's metrics with the
    checkpoint it resumed from: with no epoch left it reported nothing, and Tune failed the
    resumed trial for a result without its metric."""
    import ray.train

    log(f"rank {w.rank}: resumed after its last epoch ({state['epoch']}): its metrics reported again")
    checkpoint = ray.train.get_checkpoint() if w.rank == 0 else None
    # Ray copies it again, as a new checkpoint, and drops the one it copied: flushed first too.
    ray.train.report(state["history"][-1], checkpoint=checkpoint, checkpoint_upload_fn=ckpt.persist_durably)


def _improved(w: Worker, metrics: Dict, best: float) -> bool:
    """Rank 0 decides (it alone validates); every rank learns the answer."""
    improved = w.rank == 0 and metrics.get(VAL_METRIC, -1.0) > best
    flag = torch.tensor([float(improved)], device=collective_device())
    if w.world_size > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _restore(w: Worker, checkpoint) -> Dict:
    import pyarrow.fs

    local = isinstance(getattr(checkpoint, "filesystem", None), pyarrow.fs.LocalFileSystem)  # see read_checkpoint
    with checkpoint.as_directory() as d:
        weights, state = ckpt.read_checkpoint(d, mmap=local)
        run_folder = os.path.dirname(d.rstrip(os.sep)) or d
        ckpt.check_same_model(run_folder, state.get("model_config"), w.model_config.to_dict())
        ckpt.check_same_vocabularies(run_folder, state.get("vocab_sha256"), w.vocab_sha256)
        ckpt.check_same_lists(run_folder, state.get("lists_sha256"), w.lists_sha256)
        ckpt.check_same_features(run_folder, state.get("features_version"))
        ckpt.check_same_training(run_folder, state.get("training"), ckpt.training_settings(asdict(w.cfg)))
        # Also where the driver could not read the run (--storage s3://...): a refit of more epochs
        # than its validated run chose now was exported as the fewer epochs' model.
        check_refit_epochs(os.path.basename(os.path.dirname(checkpoint.path.rstrip("/"))), state, w.cfg)
        load_full_state_dict(w.model, weights)
        del weights  # copied into the model (mapped from a local file: its pages go back to the cache)
        optimizer_state = ckpt.read_optimizer_state(d, mmap=local)
        trained = read_trained_rows(d)
    if w.read_rows is not None and trained is None and state["epoch"] > 0 and w.rank == 0:
        # A checkpoint without masks is an uncapped run's of one worker, which read every list (one
        # resumed with --workers N): its epochs trained every row the lists hold. Rank 0's alone:
        # the ranks' marks are joined at each epoch's end, and rank 0 validates and saves them.
        sizes = (w.model_config.num_users, w.model_config.num_products)
        trained = listed_rows(w.cfg.data, w.cfg.cutoffs, *sizes)
    if w.read_rows is not None and trained is not None:
        w.read_rows = tuple(now | before for now, before in zip(w.read_rows, trained))
    if optimizer_state is not None:
        load_optimizer_state(w.optimizer, optimizer_state)
    best = f" (best {VAL_METRIC} {state['best']:.4f})" if w.cfg.run == VALIDATED else ""
    log(f"rank {w.rank}: resumed after epoch {state['epoch']}{best}")
    if state["epoch"] > w.cfg.epochs:  # check_same_training leaves the budget free to grow, not to shrink
        log(
            f"rank {w.rank}: the run trained {state['epoch']} epochs, more than --epochs {w.cfg.epochs}: nothing more "
            "is trained, and its kept epochs are chosen from as they are"
        )
    return state


def train_loop_per_worker(config: Dict) -> None:
    """Ray Train entry point: ``config`` is a :class:`TrainConfig` as a dict, plus an optional
    ``step_hook`` (fault drills only)."""
    import ray.train

    config = dict(config)
    step_hook = config.pop("step_hook", None)
    w = setup_worker(TrainConfig(**config))
    state = {"epoch": 0, "best": DIVERGED_SCORE, "stale": 0, "history": []}
    if ray.train.get_checkpoint():
        state = _restore(w, ray.train.get_checkpoint())
    shard = ray.train.get_dataset_shard("train")
    if state["history"] and not trains_on(w, state):
        report_again(w, state)
    while trains_on(w, state):
        epoch = state["epoch"] + 1
        dropout_seed, unknown_rows_seed = epoch_seeds(w.cfg.seed, w.rank, epoch)
        torch.manual_seed(dropout_seed)
        generator = torch.Generator().manual_seed(unknown_rows_seed)
        metrics = train_epoch(w, shard, epoch, generator, step_hook)
        diverged = bool(metrics.get(LOSS_DIVERGED))
        weights = full_state_dict(w.model)
        if w.read_rows is not None:
            w.listed_rows = w.read_rows  # validation ranks as the saved model will
        if w.validation is not None:  # weights that are not numbers rank nothing: not validated
            metrics.update({VAL_METRIC: DIVERGED_SCORE, VAL_DIVERGED: 1.0} if diverged else validate(w, weights))
        if w.cfg.run != VALIDATED or _improved(w, metrics, state["best"]):
            state.update(best=metrics.get(VAL_METRIC, state["best"]), stale=0, best_epoch=epoch)
        else:
            state["stale"] += 1
        if diverged:
            say_diverged(w, state, epoch)
            state[DIVERGED_EPOCH] = epoch
        state["epoch"] = epoch
        if w.cfg.run == VALIDATED:  # a refit's best is the placeholder -1: reported, it read as a score
            metrics[BEST_VAL_METRIC] = state["best"]
        state["history"] = state["history"] + [metrics]  # the curves the report draws
        state.update(
            model_config=w.model_config.to_dict(),
            run=w.cfg.run,
            trained_through=w.trained_through,
            rows_trained_before=w.rows_trained_before,
            vocab_sha256=w.vocab_sha256,
            lists_sha256=w.lists_sha256,
            features_version=FEATURES_VERSION,
            training=ckpt.training_settings(asdict(w.cfg)),
            hardware=ckpt.hardware(world()[1], w.device.type == "cuda"),
        )
        if w.rank == 0:  # the others hold no validation: their best read -1.0000 beside rank 0's line
            log(
                f"epoch {epoch}: "
                + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            )
        report_checkpoint(w, state, metrics, weights)
        del weights  # rank 0's gathered copy of every table: not held through the next epoch's training
