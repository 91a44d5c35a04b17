"""Ray Train: the ``train_loop_per_worker`` that fits AdvancedNCF, and the trainer around it.

* data: each worker reads its shard of the preprocessed examples
  (``ray.train.get_dataset_shard("train")``), shuffled by a local buffer;
* one worker: the plain model; several: TorchRec ``DistributedModelParallel`` shards the
  embedding tables (gloo on CPU, NCCL on GPU) and data-parallel dense layers;
* GPU when there is one (``ScalingConfig(use_gpu=...)``), with bfloat16 autocast;
* a checkpoint every epoch (``ray.train.report``), resumed from after a worker failure
  (``FailureConfig``); early stopping on validation NDCG@10.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from ncf.data import layout
from ncf.data.features import Batch
from ncf.data.user_state import UserStates
from ncf.data.vocab import Vocabularies
from ncf.evaluate.evaluation import Period, full_ranking, load_period, recommender_fns, sample_users
from ncf.model.advanced_ncf import AdvancedNCF, ModelConfig
from ncf.rank.recommender import Recommender
from ncf.splits import VAL

VAL_METRIC = "val_ndcg@10"
WEIGHTS = "model.pt"
OPTIMIZER = "optimizer.pt"
TRAIN_STATE = "train_state.json"


@dataclass
class TrainConfig:
    """Settings of one training run (a Tune trial overrides some of them)."""

    data: str = ""
    model: Dict = field(default_factory=dict)  # ModelConfig fields other than the vocab sizes
    epochs: int = 3
    batch_size: int = 4096
    learning_rate: float = 2e-3
    patience: int = 1  # epochs without a better val NDCG@10 before stopping
    val_users: int = 600  # users sampled for per-epoch validation (0 = all)
    # Negatives per positive to train on, subsampled from what preprocessing drew (0 = all).
    negatives_per_positive: float = 0.0
    shuffle_buffer: int = 200_000
    max_steps_per_epoch: int = 0  # 0 = the whole shard; tests use a few steps
    torch_threads: int = 0  # 0 = this machine's cores shared among the workers
    # Fault drill: rank 0's process dies mid-epoch once (the marker file remembers it).
    crash_once_at_epoch: int = 0
    crash_marker: str = ""
    seed: int = 0

    def model_config(self, sizes: Dict[str, int]) -> ModelConfig:
        return ModelConfig(**{**self.model, **sizes})


def _log(message: str) -> None:
    # To the process's own stdout: Ray Train's patched print tees a plain print to its logger
    # and to the worker's wrapped stdout, so every line reached the driver twice.
    print(f"[train] {message}", file=sys.__stdout__, flush=True)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_model(
    config: ModelConfig, device: torch.device, world_size: int, learning_rate: float
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and its optimizer.

    One worker: the plain model and Adam. Several: TorchRec's ``DistributedModelParallel``
    shards the embedding tables across workers (the planner picks the layout), their
    row-wise Adagrad runs fused in the backward pass, and Adam updates the data-parallel
    dense layers.
    """
    if world_size == 1:
        model = AdvancedNCF(config, device=device).to(device)
        return model, torch.optim.Adam(model.parameters(), lr=learning_rate)
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    model = AdvancedNCF(config, device=torch.device("meta"))
    tables = [p for name, p in model.named_parameters() if "embedding_collection" in name]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": learning_rate * 10})
    sharded = DistributedModelParallel(model, device=device)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(sharded.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=learning_rate),
    )
    return sharded, CombinedOptimizer([sharded.fused_optimizer, dense])


def sharded_table_count(model: torch.nn.Module) -> int:
    plan = getattr(model, "plan", None)
    return sum(len(module_plan) for module_plan in plan.plan.values()) if plan is not None else 0


def unwrap(model: torch.nn.Module) -> AdvancedNCF:
    return model.module if hasattr(model, "module") else model


def _unwrapped_name(key: str) -> str:
    """A DistributedModelParallel state-dict key as the plain model names it."""
    return key[len("module.") :] if key.startswith("module.") else key


def full_state_dict(model: torch.nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The unsharded weights on rank 0 (None on other ranks)."""
    rank, world = _world()
    if world == 1:
        return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    state = {}
    for key, value in model.state_dict().items():
        name = _unwrapped_name(key)
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=out)
            state[name] = out
        else:
            state[name] = value.detach().cpu().clone()
    return state if rank == 0 else None


def validation_ndcg(
    model: AdvancedNCF, vocabs: Vocabularies, states: UserStates, period: Period, users: np.ndarray
) -> Dict[str, float]:
    """Full-ranking metrics of the current weights on the validation period's sampled users."""
    model.eval()
    recommender = Recommender(model, vocabs, states, data_end=period.start)
    rank, _ = recommender_fns(recommender)
    metrics = full_ranking(rank, period, users)
    model.train()
    return {f"val_{k}": float(v) for k, v in metrics.items()}


def _load_checkpoint(model: torch.nn.Module, optimizer, checkpoint) -> Dict:
    with checkpoint.as_directory() as d:
        weights, state = read_checkpoint(d)
        if _world()[1] == 1:
            unwrap(model).load_state_dict(weights)
        else:
            _load_sharded(model, weights)
        if os.path.exists(os.path.join(d, OPTIMIZER)) and _world()[1] == 1:
            optimizer.load_state_dict(torch.load(os.path.join(d, OPTIMIZER), weights_only=True, map_location="cpu"))
        return state


def _load_sharded(model: torch.nn.Module, weights: Dict[str, torch.Tensor]) -> None:
    """Copies full tables into this rank's shards (the rest of the weights are replicated)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for key, value in model.state_dict().items():
        source = weights[_unwrapped_name(key)]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                shard.tensor.detach().copy_(source[index])
        else:
            value.detach().copy_(source)


def negative_keep_rate(wanted: float, drawn: float) -> float:
    """Share of the stored negatives to keep so that ``wanted`` remain per positive."""
    if wanted <= 0 or drawn <= 0:
        return 1.0
    if wanted > drawn:
        raise ValueError(f"negatives_per_positive={wanted} but preprocessing drew only {drawn} per positive")
    return wanted / drawn


def subsample_negatives(batch: Batch, keep_rate: float, generator: torch.Generator) -> Batch:
    """Keeps every positive and each negative with probability ``keep_rate``. The sampler's
    distribution is unchanged, so the logQ correction stays valid."""
    if keep_rate >= 1.0:
        return batch
    keep = (batch.label > 0) | (torch.rand(batch.batch_size, generator=generator) < keep_rate)
    return batch.select(keep)


def _crash_once(cfg: TrainConfig) -> None:
    if cfg.crash_marker and not os.path.exists(cfg.crash_marker):
        open(cfg.crash_marker, "w").close()
        _log("fault drill: this worker process exits now")
        os._exit(1)


def train_loop_per_worker(config: Dict) -> None:
    """Ray Train entry point: ``config`` is a :class:`TrainConfig` as a dict."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config)
    torch.manual_seed(cfg.seed)
    rank, world = _world()
    # Ray sets one thread per requested CPU; the model's matmuls want the cores data loading leaves.
    torch.set_num_threads(cfg.torch_threads or max(1, (os.cpu_count() or 1) // world))
    device = ray.train.torch.get_device()
    with open(layout.stats_path(cfg.data)) as f:
        stats = json.load(f)
    boundaries = stats["boundaries"]
    keep_rate = negative_keep_rate(cfg.negatives_per_positive, stats["config"]["examples"]["negatives_per_positive"])
    sampler = torch.Generator().manual_seed(cfg.seed + rank)
    vocabs = Vocabularies.load(layout.vocab_dir(cfg.data))
    model_config = cfg.model_config(vocabs.sizes())
    model, optimizer = build_model(model_config, device, world, cfg.learning_rate)
    if rank == 0 and world > 1:
        _log(f"embedding tables sharded across {world} workers: {sharded_table_count(model)} tables planned")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = device.type == "cuda"

    state = {"epoch": 0, "best": -1.0, "stale": 0}
    checkpoint = ray.train.get_checkpoint()
    resumed_from = 0
    if checkpoint:
        state = _load_checkpoint(model, optimizer, checkpoint)
        resumed_from = state["epoch"]
        _log(f"rank {rank}: resumed after epoch {state['epoch']} (best {VAL_METRIC} {state['best']:.4f})")
    if rank == 0:  # only rank 0 validates; the period and its user sample are fixed for the run
        states = UserStates.load(layout.user_state_dir(cfg.data))
        val_period = load_period(cfg.data, VAL, boundaries)
        val_users = sample_users(val_period.users, cfg.val_users or None)

    shard = ray.train.get_dataset_shard("train")
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"] + 1
        model.train()
        started, seen, loss_sum, steps = time.time(), 0, 0.0, 0
        for table in shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed + epoch,
        ):
            batch = Batch.from_arrow(table).with_history_length(model_config.history_length)
            batch = subsample_negatives(batch, keep_rate, sampler).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = model(batch, return_logits=True)
            # logQ correction: the model learns log p(product | context), not p / q.
            loss = loss_fn(logits.float() - batch.sampling_log_q, batch.label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += batch.batch_size
            loss_sum += float(loss.detach())
            steps += 1
            if steps % 200 == 0:
                _log(
                    f"rank {rank} epoch {epoch} step {steps}: loss {loss_sum / steps:.4f}, "
                    f"{seen / (time.time() - started):,.0f} examples/s"
                )
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
            if cfg.crash_once_at_epoch == epoch and steps == 2 and rank == 0:
                _crash_once(cfg)
        elapsed = time.time() - started
        weights = full_state_dict(model)
        metrics = {
            "epoch": epoch,
            "world_size": world,
            "sharded_tables": sharded_table_count(model),
            "resumed_from_epoch": resumed_from,
            "train_loss": loss_sum / max(steps, 1),
            "examples_per_s": seen * world / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
        }
        improved = torch.zeros(1)
        if rank == 0:
            evaluation_model = AdvancedNCF(model_config).to(device)
            evaluation_model.load_state_dict(weights)
            metrics.update(validation_ndcg(evaluation_model, vocabs, states, val_period, val_users))
            improved[0] = float(metrics[VAL_METRIC] > state["best"])
        if world > 1:
            dist.broadcast(improved, src=0)
        if improved.item():
            state.update(best=metrics.get(VAL_METRIC, state["best"]), stale=0, best_epoch=epoch)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        metrics["best_" + VAL_METRIC] = state["best"]
        state["history"] = state.get("history", []) + [metrics]  # the curves the report draws
        _log(
            f"epoch {epoch}: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        )
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save(weights, os.path.join(tmp, WEIGHTS))
                if world == 1:
                    torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER))
                with open(os.path.join(tmp, TRAIN_STATE), "w") as f:
                    json.dump({**state, "model_config": asdict(model_config)}, f)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def worker_resources(num_workers: int, use_gpu: bool, cpu_budget: Optional[float] = None) -> Dict[str, float]:
    """CPUs per training worker: ``cpu_budget`` shared among the workers, by default all of the
    cluster's CPUs but one. That one is left to Ray Data's readers: workers that take every CPU
    starve the reads that feed them, and training hangs."""
    import ray

    if cpu_budget is None:
        cpu_budget = ray.cluster_resources().get("CPU", 1.0) - 1.0
    per_worker = min(1.0, max(cpu_budget, 0.25) / num_workers)
    resources = {"CPU": per_worker}
    if use_gpu:
        resources["GPU"] = 1.0
    return resources


def fit(
    config: TrainConfig,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: Optional[str] = None,
    name: Optional[str] = None,
    max_failures: int = 2,
    callbacks: Optional[list] = None,
    cpu_budget: Optional[float] = None,
):
    """Runs the ``TorchTrainer``; returns its ``ray.train.Result``.

    ``callbacks`` go to the trainer's ``RunConfig`` (a Tune trial passes Ray Tune's
    ``TuneReportCallback`` so that each epoch's metrics reach the scheduler). ``cpu_budget``:
    see :func:`worker_resources` (concurrent Tune trials split the cluster between them).
    """
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ncf.splits import TRAIN

    # No randomize_block_order(): it is a barrier that reads the whole split before the first
    # batch; the workers' local shuffle buffers mix the rows instead.
    train = ray.data.read_parquet(layout.examples_dir(config.data, TRAIN))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(config),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=worker_resources(num_workers, use_gpu, cpu_budget),
        ),
        datasets={"train": train},
        run_config=RunConfig(
            name=name,
            storage_path=os.path.abspath(storage_path) if storage_path else None,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(
                num_to_keep=3, checkpoint_score_attribute=VAL_METRIC, checkpoint_score_order="max"
            ),
        ),
    )
    return trainer.fit()


def best_checkpoint_weights(result) -> tuple[Dict[str, torch.Tensor], Dict, Dict]:
    """(weights, train state, metrics) of the checkpoint with the best validation NDCG@10."""
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if VAL_METRIC in m]
    if not candidates:
        raise RuntimeError(f"training produced no checkpoint with {VAL_METRIC}: {result.error or 'no epochs ran'}")
    checkpoint, metrics = max(candidates, key=lambda cm: cm[1][VAL_METRIC])
    with checkpoint.as_directory() as d:
        weights, state = read_checkpoint(d)
    return weights, state, metrics


def run_history(result) -> list:
    """Every epoch's metrics of a run, from its latest checkpoint (older ones may be deleted)."""
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as d:
        return read_train_state(d).get("history", [])


def read_train_state(directory: str) -> Dict:
    with open(os.path.join(directory, TRAIN_STATE)) as f:
        return json.load(f)


def read_checkpoint(directory: str) -> tuple[Dict[str, torch.Tensor], Dict]:
    """(weights, train state) of a checkpoint directory written by ``train_loop_per_worker``."""
    weights = torch.load(os.path.join(directory, WEIGHTS), weights_only=True, map_location="cpu")
    return weights, read_train_state(directory)
