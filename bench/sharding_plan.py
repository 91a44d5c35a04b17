"""TorchRec's sharding plan for a large catalogue, and the GPU memory it implies, as JSON.

AdvancedNCF on 10M users x 1M products (its MF and MLP tables as wide as ``ModelConfig``'s
defaults, 32, unless ``--dim`` says otherwise) is built on the meta device, so no table is
allocated, with row-wise Adagrad fused into the backward pass exactly as
``ncf.train.sharding.build_model`` sets it up for ``DistributedModelParallel``. TorchRec's
``EmbeddingShardingPlanner`` then plans it for N GPUs, one per node as ``cluster.yaml``'s
``gpu_worker`` nodes have (A10G, 24 GiB), with every table constrained to row-wise sharding.

Per rank the script reports the rows it holds, the bytes they imply (fp32 weights plus the
row-wise Adagrad state, one fp32 per row) and the planner's own HBM estimate (those plus its
input/output buffers). Planning only reads shapes, so it runs on a CPU machine.

python -m bench.sharding_plan [--gpus 2 4 8] [--users 10000000] [--products 1000000] [--dim D] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import warnings
from typing import Dict, List

import torch

from ncf.model.advanced_ncf import AdvancedNCF, ModelConfig

GIB = 2**30
FP32_BYTES = 4
ROWWISE_ADAGRAD_FLOATS_PER_ROW = 1
A10G_HBM_BYTES = 24 * GIB
# The widths the trained model has: ModelConfig's defaults (--dim overrides both).
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
MF_DIM, MLP_DIM = _CONFIG_DEFAULTS["mf_embedding_dim"], _CONFIG_DEFAULTS["mlp_embedding_dim"]


def large_model(num_users: int, num_products: int, dim: int | None = None) -> AdvancedNCF:
    """The model on the meta device with the fused optimizer attached as training does it
    (the planner sizes optimizer state from it); ``dim`` None keeps ModelConfig's widths."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    config = ModelConfig(
        num_users=num_users,
        num_products=num_products,
        num_departments=50,
        num_categories=500,
        mf_embedding_dim=MF_DIM if dim is None else dim,
        mlp_embedding_dim=MLP_DIM if dim is None else dim,
    )
    model = AdvancedNCF(config, device=torch.device("meta"))
    tables = [p for name, p in model.named_parameters() if "embedding_collection" in name]
    apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": 0.02})
    return model


def table_configs(model: AdvancedNCF) -> Dict[str, object]:
    """Every ``EmbeddingBagConfig`` of the model by table name."""
    return {
        t.name: t
        for module in (model.mf_embedding_collection, model.mlp_embedding_collection)
        for t in module.embedding_bag_configs()
    }


def plan_row_wise(model: AdvancedNCF, world_size: int, hbm_bytes: int, batch_size: int):
    """(ShardingPlan, the planner's chosen sharding options) for ``world_size`` GPUs, one per node."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.types import ShardingType

    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(world_size=world_size, local_world_size=1, hbm_cap_bytes=hbm_bytes),
        kernel_config=KernelConfig(compute_device="cuda"),
    )
    constraints = {
        name: ParameterConstraints(sharding_types=[ShardingType.ROW_WISE.value]) for name in table_configs(model)
    }
    with warnings.catch_warnings():  # the default storage reservation (as DMP uses it) warns on construction
        warnings.simplefilter("ignore", FutureWarning)
        planner = EmbeddingShardingPlanner(
            topology=topology, batch_size=batch_size, constraints=constraints, debug=False
        )
    plan = planner.plan(model, get_default_sharders())
    # The chosen options carry the planner's per-shard storage estimate (no public accessor).
    return plan, getattr(planner, "_best_plan", None) or []


def describe_plan(model: AdvancedNCF, plan, options, world_size: int) -> Dict:
    """Per table: sharding type, kernel and rows per rank; per rank: rows and bytes."""
    tables, per_rank = (
        [],
        [
            {"rank": r, "rows": 0, "weight_bytes": 0, "optimizer_bytes": 0, "planner_hbm_bytes": 0}
            for r in range(world_size)
        ],
    )
    configs = table_configs(model)
    for module_path, module_plan in sorted(plan.plan.items()):
        for name, sharding in sorted(module_plan.items()):
            dim = configs[name].embedding_dim
            rows = [0] * world_size
            for shard in sharding.sharding_spec.shards:
                rank = shard.placement.rank()
                rows[rank] += shard.shard_sizes[0]
                assert shard.shard_sizes[1] == dim, "row-wise shards keep every column"
            for rank, n in enumerate(rows):
                per_rank[rank]["rows"] += n
                per_rank[rank]["weight_bytes"] += n * dim * FP32_BYTES
                per_rank[rank]["optimizer_bytes"] += n * ROWWISE_ADAGRAD_FLOATS_PER_ROW * FP32_BYTES
            tables.append(
                {
                    "module": module_path,
                    "table": name,
                    "rows": configs[name].num_embeddings,
                    "dim": dim,
                    "features": len(configs[name].feature_names),
                    "sharding_type": sharding.sharding_type,
                    "compute_kernel": sharding.compute_kernel,
                    "rows_per_rank": rows,
                }
            )
    for option in options:
        for shard in option.shards:
            per_rank[shard.rank]["planner_hbm_bytes"] += shard.storage.hbm
    for rank in per_rank:
        rank["total_bytes"] = rank["weight_bytes"] + rank["optimizer_bytes"]
        rank["total_gib"] = round(rank["total_bytes"] / GIB, 3)
        rank["planner_hbm_gib"] = round(rank["planner_hbm_bytes"] / GIB, 3)
    return {
        "gpus": world_size,
        "tables": tables,
        "per_rank": per_rank,
        "max_gib_per_gpu": max(r["total_gib"] for r in per_rank),
        "max_planner_hbm_gib_per_gpu": max(r["planner_hbm_gib"] for r in per_rank),
    }


def unsharded_bytes(model: AdvancedNCF) -> int:
    """Weights plus row-wise Adagrad state of all tables on one device."""
    return sum(
        t.num_embeddings * (t.embedding_dim + ROWWISE_ADAGRAD_FLOATS_PER_ROW) * FP32_BYTES
        for t in table_configs(model).values()
    )


def markdown(result: Dict) -> str:
    """The table for BENCHMARKS.md: one row per GPU count."""
    lines = [
        "| GPUs | sharding (all 4 tables) | rows per GPU of each user table | rows per GPU of each "
        "product table | weights + row-wise Adagrad per GPU | planner's HBM estimate per GPU |",
        "|---:|---|---:|---:|---:|---:|",
        f"| 1 (unsharded) | - | {result['num_users']:,} | "
        f"{result['num_products']:,} | {result['unsharded_gib']:.2f} GiB | - |",
    ]
    for plan in result["plans"]:
        kinds = sorted({t["sharding_type"] for t in plan["tables"]})
        users = max(max(t["rows_per_rank"]) for t in plan["tables"] if t["table"].startswith("user"))
        products = max(max(t["rows_per_rank"]) for t in plan["tables"] if t["table"].startswith("product"))
        lines.append(
            f"| {plan['gpus']} | {', '.join(kinds)} | {users:,} | {products:,} | "
            f"{plan['max_gib_per_gpu']:.2f} GiB | {plan['max_planner_hbm_gib_per_gpu']:.2f} GiB |"
        )
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--users", type=int, default=10_000_000)
    p.add_argument("--products", type=int, default=1_000_000)
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help=f"width of the MF and MLP tables (default: ModelConfig's, {MF_DIM} and {MLP_DIM})",
    )
    p.add_argument("--hbm-gib", type=float, default=A10G_HBM_BYTES / GIB)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--markdown", action="store_true", help="also print the BENCHMARKS.md table")
    args = p.parse_args(argv)
    logging.getLogger("torchrec").setLevel(logging.ERROR)  # dry-run warnings about dense sizes

    model = large_model(args.users, args.products, args.dim)
    plans = [
        describe_plan(model, *plan_row_wise(model, n, int(args.hbm_gib * GIB), args.batch_size), n) for n in args.gpus
    ]
    result = {
        "benchmark": "sharding_plan",
        "num_users": args.users,
        "num_products": args.products,
        "mf_embedding_dim": model.config.mf_embedding_dim,
        "mlp_embedding_dim": model.config.mlp_embedding_dim,
        "hbm_gib_per_gpu": args.hbm_gib,
        "batch_size": args.batch_size,
        "unsharded_gib": round(unsharded_bytes(model) / GIB, 3),
        "plans": plans,
    }
    print(json.dumps(result))
    if args.markdown:
        print(markdown(result))
    return result


if __name__ == "__main__":
    main()
