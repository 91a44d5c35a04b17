"""The model and its optimizer on one or several workers.

Every run trains the embedding tables with TorchRec's fused kernels: the optimizer (row-wise
Adagrad) is applied inside the backward pass to the rows a batch touched, so a step costs
O(batch), not O(table), even on one worker. Several workers: ``DistributedModelParallel`` shards
the tables across them (the planner picks the layout; gloo on CPU, NCCL on GPU) and the dense
layers are data-parallel; Adam updates them.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.config import ModelConfig

TABLE_LEARNING_RATE_SCALE = 10.0  # row-wise Adagrad wants a larger step than Adam


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where the tensors of this process group's collectives must live: NCCL (Ray Train's backend
    whenever the workers have GPUs) moves only CUDA tensors, gloo CPU ones. Ray Train has already
    made the worker's GPU the current one."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def summed_across_ranks(values: List[float]) -> List[float]:
    """Each of ``values`` summed over every rank of the process group (as they are without one).
    A collective: every rank must call it."""
    _, world_size = world()
    if world_size == 1:
        return [float(v) for v in values]
    total = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(total)
    return total.cpu().tolist()


def any_across_ranks(mask: "np.ndarray") -> "np.ndarray":
    """``mask`` (bool) or'd over every rank of the process group (as it is without one). A
    collective: every rank must call it, with a mask of the same length."""
    _, world_size = world()
    if world_size == 1:
        return mask
    flags = torch.from_numpy(mask.astype(np.uint8)).to(collective_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.cpu().numpy().astype(bool)


def build_model(config: ModelConfig, device: torch.device, learning_rate: float) -> tuple[torch.nn.Module, object]:
    """The (sharded) model and its combined optimizer (fused tables + Adam for the rest)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    model = AdvancedNCF(config, device=torch.device("meta"))
    tables = [p for name, p in model.named_parameters() if "embedding_collection" in name]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": learning_rate * TABLE_LEARNING_RATE_SCALE})
    sharded = DistributedModelParallel(model, device=device, plan=_fused_plan(model, device))
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(sharded.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=learning_rate),
    )
    return sharded, CombinedOptimizer([sharded.fused_optimizer, dense])


def _fused_plan(model: AdvancedNCF, device: torch.device):
    """A plan that keeps every table on a fused kernel (table- or row-wise), never data-parallel:
    the planner would replicate small tables, which then get dense gradients and no fused optimizer."""
    from torchrec.distributed.comm import get_local_size
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingType

    _, world_size = world()
    names = [
        config.name
        for collection in (
            getattr(model, "mf_embedding_collection", None),
            getattr(model, "mlp_embedding_collection", None),
        )
        if collection is not None
        for config in collection.embedding_bag_configs()
    ]
    constraints = {
        name: ParameterConstraints(
            sharding_types=[ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value],
            compute_kernels=[EmbeddingComputeKernel.FUSED.value],
        )
        for name in names
    }
    # The GPU's own memory: TorchRec assumes 32 GiB otherwise, and the FUSED kernel has no host
    # fallback, so a plan of a 24 GiB A10G's tables could fit the planner and not the card.
    hbm = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world_size, local_world_size=get_local_size(world_size), hbm_cap_bytes=hbm),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    # A fixed share of memory kept free for the dense part: the heuristic default estimates the
    # dense tensors from a dry run, which TorchRec warns is unreliable.
    planner = EmbeddingShardingPlanner(
        topology=topology, constraints=constraints, storage_reservation=FixedPercentageStorageReservation(0.15)
    )
    group = dist.GroupMember.WORLD
    return planner.collective_plan(model, get_default_sharders(), group)


def sharded_table_count(model: torch.nn.Module) -> int:
    plan = getattr(model, "plan", None)
    return sum(len(module_plan) for module_plan in plan.plan.values()) if plan is not None else 0


def _plain_name(key: str) -> str:
    """A DistributedModelParallel state-dict key as the plain model names it."""
    return key[len("module.") :] if key.startswith("module.") else key


def full_state_dict(model: torch.nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The unsharded weights on rank 0 (None on other ranks).

    A table that one CPU worker holds whole is returned as the training tensor itself, not a
    copy (at 10M households the tables are gigabytes): read the weights before the next step
    changes them, as the epoch's validation and checkpoint do."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    rank, world_size = world()
    state = {}
    for key, value in model.state_dict().items():
        whole = _whole_cpu_table(value) if isinstance(value, ShardedTensor) and world_size == 1 else None
        if whole is not None:
            state[_plain_name(key)] = whole
        elif isinstance(value, ShardedTensor):
            state[_plain_name(key)] = _gathered_table(value)
        else:
            state[_plain_name(key)] = value.detach().cpu().clone()
    return state if rank == 0 else None


def _gathered_table(value) -> Optional[torch.Tensor]:
    """A ShardedTensor whole in rank 0's host memory (None on other ranks): each shard sent by the
    rank that holds it, one at a time, over :func:`_cpu_group`, and received into its place. Rank
    0 holds the table and one shard, another rank one shard at a time (``gather_object`` padded
    every rank's part to the largest: a table one rank holds whole, world-size times over)."""
    rank, _ = world()
    group = _cpu_group()
    local = {tuple(s.metadata.shard_offsets): s.tensor for s in value.local_shards()}
    full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
    for shard in value.metadata().shards_metadata:  # the same order on every rank
        owner, offsets = shard.placement.rank(), tuple(shard.shard_offsets)
        index = tuple(slice(o, o + n) for o, n in zip(offsets, shard.shard_sizes))
        if rank == 0 and owner == 0:
            full[index] = local[offsets].detach().cpu()
        elif rank == 0:
            part = torch.empty(list(shard.shard_sizes), dtype=value.dtype)
            dist.recv(part, src=owner, group=group)
            full[index] = part
        elif owner == rank:
            dist.send(local[offsets].detach().cpu().contiguous(), dst=0, group=group)
    return full


def _whole_cpu_table(value) -> Optional[torch.Tensor]:
    """The table of a ShardedTensor whose one local shard is all of it, on the CPU; else None."""
    shards = value.local_shards()
    if len(shards) != 1 or list(shards[0].metadata.shard_sizes) != list(value.size()):
        return None
    tensor = shards[0].tensor
    return tensor.detach() if tensor.device.type == "cpu" else None


def load_full_state_dict(model: torch.nn.Module, weights: Dict[str, torch.Tensor]) -> None:
    """Copies full weights into the model: this rank's shards of the tables, the rest whole."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for key, value in model.state_dict().items():
        source = weights[_plain_name(key)]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                shard.tensor.detach().copy_(source[index])
        else:
            value.detach().copy_(source)


def _local_view(value):
    """An optimizer state with each ShardedTensor replaced by this rank's shards (offsets, values)
    and its global size: plain tensors that can travel to rank 0."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(value, ShardedTensor):
        shards = [(list(s.metadata.shard_offsets), s.tensor.detach().cpu().clone()) for s in value.local_shards()]
        return {"__shards__": shards, "size": list(value.size())}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _local_view(v) for k, v in value.items()}
    return value


def _assembled(parts: list) -> torch.Tensor:
    """The whole tensor from every rank's shards of it."""
    full = None
    for part in parts:
        for offsets, tensor in part["__shards__"]:
            if full is None:
                full = torch.zeros(part["size"], dtype=tensor.dtype)
            full[tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape))] = tensor
    return full


_CPU_GROUP = None


def _cpu_group():
    """A gloo group of the same ranks when the default one is NCCL (None otherwise: gloo already
    moves CPU tensors). Gathered through NCCL, a whole table needed world-size buffers on rank 0's
    GPU (``ShardedTensor.gather``: a 10M x 64 table on 4 workers, about 15 GB), the memory that
    sharding the tables was to save; through gloo it stays in host memory."""
    global _CPU_GROUP
    if dist.get_backend() != dist.Backend.NCCL:
        return None
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")  # every rank reaches this in the same collective
    return _CPU_GROUP


def _gathered_on_cpu(local) -> Optional[list]:
    """Every rank's ``local`` (plain CPU tensors: :func:`_local_view`) on rank 0, in rank order;
    None on the other ranks."""
    rank, world_size = world()
    if world_size == 1:
        return [local]
    views = [None] * world_size if rank == 0 else None
    dist.gather_object(local, views, dst=0, group=_cpu_group())
    return views


def full_optimizer_state(optimizer) -> Optional[Dict]:
    """The optimizer state of every rank merged on rank 0 (None elsewhere): each table's fused
    row-wise Adagrad state (a table, or its rows, lives on the rank that holds it) assembled whole,
    and the dense layers' Adam state (the same on every rank)."""
    rank, _ = world()
    views = _gathered_on_cpu(_local_view(optimizer.state_dict()))
    if rank != 0:
        return None
    state: Dict = {}
    for view in views:
        for param, entries in view["state"].items():
            for name, value in entries.items():
                state.setdefault(param, {}).setdefault(name, []).append(value)
    merged = {
        param: {
            name: _assembled(values) if isinstance(values[0], dict) and "__shards__" in values[0] else values[0]
            for name, values in entries.items()
        }
        for param, entries in state.items()
    }
    return {"state": merged}


def _scatter(live, full):
    """``full`` (whole tensors) shaped like ``live``: each ShardedTensor gets this rank's slices."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(live, ShardedTensor):
        for shard in live.local_shards():
            index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
            shard.tensor.detach().copy_(full[index])
        return live
    if isinstance(live, dict):
        return {k: _scatter(v, full[k]) for k, v in live.items()}
    return full


def load_optimizer_state(optimizer, full: Dict) -> None:
    """Restores :func:`full_optimizer_state`'s output into a freshly built optimizer (each rank
    takes the entries of the parameters it holds)."""
    optimizer.init_state()  # the dense optimizer creates its state lazily; the live dict needs it
    live = optimizer.state_dict()  # TorchRec's KeyedOptimizer: {"state": ...} (no param_groups by default)
    optimizer.load_state_dict({**live, "state": _scatter(live["state"], full["state"])})
