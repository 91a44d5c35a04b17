"""Training throughput: the same model and lists through the model alone, a plain PyTorch loop
and Ray Train with one worker, in one run (candidates/s: a candidate is one (household,
product, moment) example).

python -m bench.train_throughput --data artifacts/data/cj [--steps 200]
python -m bench.train_throughput --synthetic-users 1000000 --synthetic-products 100000 [--steps 200]

* model only: forward, backward and optimizer step on batches already in memory;
* plain loop: :func:`ncf.train.loop.train_epoch` over the lists read with pyarrow, one process;
* Ray Train: ``fit`` with one worker (Ray Data streaming the same lists beside it).

The loop and Ray Train rates are steady rates, counted from the end of the first step (the input
pipeline's start is reported beside them: Ray Data's first batch takes seconds, once per epoch).

Every mode trains the tables with the fused kernels (row-wise Adagrad in the backward pass), so a
step costs O(batch) whatever the table sizes: the synthetic run puts that to the test with
tables of 1M households and 100k products. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.features import DURATION_COLUMNS, FEATURES_VERSION, NUM_FEATURES, Catalog
from ncf.data.vocab import FIRST_TS, Vocabularies, Vocabulary
from ncf.jsonio import write_json
from ncf.model.batch import Batch
from ncf.model.integrity import vocab_digest
from ncf.splits import REFIT, VALIDATED
from ncf.train.config import TrainConfig
from ncf.train.loop import Worker, train_epoch, worker_threads
from ncf.train.sharding import build_model
from ncf.train.trainer import fit, run_cutoffs

HISTORY = 20
CUTOFF = 1_700_000_000


class LocalShard:
    """What ``ray.train.get_dataset_shard`` gives the loop, over an in-memory Arrow table."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def iter_batches(
        self,
        batch_size: int,
        batch_format: str,
        local_shuffle_buffer_size=None,
        local_shuffle_seed=0,
        prefetch_batches=1,
    ):
        # One gather per epoch, then zero-copy slices: what reading a shuffled file costs (a
        # gather per batch of list columns was slower than the model).
        order = np.random.default_rng(local_shuffle_seed).permutation(self.table.num_rows)
        shuffled = self.table.take(order)
        for start in range(0, len(order), batch_size):
            yield shuffled.slice(start, batch_size)


def write_synthetic_lists(root: str, users: int, products: int, lists: int, per_list: int = 250, seed: int = 0) -> str:
    """A DATA directory with random training lists over tables of ``users`` x ``products`` (the
    numbers do not matter here, the table sizes do)."""
    rng = np.random.default_rng(seed)
    departments, categories = 20, 200
    vocabs = Vocabularies(
        Vocabulary.from_ids(np.arange(1, users).astype(str), "int", {FIRST_TS: np.zeros(users - 1, np.int64)}),
        Vocabulary.from_ids(
            np.arange(1, products).astype(str),
            "int",
            {
                "department_index": rng.integers(1, departments, products - 1),
                "category_index": rng.integers(1, categories, products - 1),
                FIRST_TS: np.zeros(products - 1, np.int64),
            },
        ),
        Vocabulary.from_ids([f"d{i}" for i in range(1, departments)]),
        Vocabulary.from_ids([f"c{i}" for i in range(1, categories)]),
    )
    vocabs.save(layout.vocab_dir(root))
    rows = []
    for _ in range(lists):
        n = int(rng.integers(per_list // 2, per_list))
        features = rng.random((n, NUM_FEATURES)).astype(np.float32) * 3
        features[:, DURATION_COLUMNS] *= 100
        rows.append(
            {
                E.USER: int(rng.integers(1, users)),
                E.CUTOFF: CUTOFF,
                E.MOMENT: CUTOFF + 3600,
                E.HISTORY: rng.integers(1, products, HISTORY),
                E.HISTORY_AGE_DAYS: np.sort(rng.random(HISTORY) * 200).astype(np.float32),
                E.TIME_PARTS: np.array([10, 2, 100, 4]),
                E.PRODUCT: rng.integers(1, products, n),
                E.LABEL: rng.random(n) < 0.15,
                E.LOG_Q: np.zeros(n, np.float32),
                E.FEATURES: features,
                E.BOUGHT_UNKNOWN: 0,
            }
        )
    os.makedirs(layout.examples_dir(root, CUTOFF))
    pq.write_table(E.to_arrow(rows, HISTORY), os.path.join(layout.examples_dir(root, CUTOFF), "lists.parquet"))
    write_json(
        layout.stats_path(root),
        {
            "boundaries": {"start": 0, "val_start": CUTOFF, "test_start": CUTOFF, "end": CUTOFF + 86_400},
            "cutoffs": {VALIDATED: [CUTOFF], REFIT: [CUTOFF]},
            "config": {"examples": {"horizon_days": 35, "history_length": HISTORY}},
            "features_version": FEATURES_VERSION,
        },
    )
    return root


def _worker(data: str, config: TrainConfig) -> Worker:
    vocabs = Vocabularies.load(layout.vocab_dir(data))
    model_config = config.model_config(vocabs.sizes())
    model, optimizer = build_model(model_config, torch.device("cpu"), config.learning_rate)
    catalog = Catalog.of(vocabs.products)
    return Worker(
        cfg=config,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        model_config=model_config,
        model=model,
        optimizer=optimizer,
        catalog=catalog,
        vocabs=vocabs,
        trained_through=0,
        rows_trained_before=0,
        vocab_sha256=vocab_digest(data),
    )


def model_only(w: Worker, table: pa.Table, steps: int) -> float:
    batches = [Batch.from_arrow(table.slice(i * w.cfg.batch_size, w.cfg.batch_size), w.catalog) for i in range(4)]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    seen, started = 0, None
    for step in range(steps + 3):
        if step == 3:  # warm-up steps are not timed
            seen, started = 0, time.perf_counter()
        batch = batches[step % len(batches)]
        loss = loss_fn(w.model(batch, return_logits=True) - batch.log_q, batch.label)
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        seen += batch.num_candidates
    return seen / (time.perf_counter() - started)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a DATA directory (its validated lists); else synthetic lists")
    p.add_argument("--synthetic-users", type=int, default=1_000_000)
    p.add_argument("--synthetic-products", type=int, default=100_000)
    p.add_argument("--synthetic-lists", type=int, default=7_000, help="enough for --steps steps of 32 lists")
    p.add_argument("--steps", type=int, default=200, help="training steps timed in each mode")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="lists per step")
    p.add_argument("--torch-threads", type=int, default=0, help="threads of every mode (0: the Ray worker's default)")
    args = p.parse_args(argv)
    if args.steps < 2:  # the steady rates count the steps after the first
        p.error("--steps: at least 2")
    import ray
    import torch.distributed as dist

    from jobs.cli import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or write_synthetic_lists(
            tmp, args.synthetic_users, args.synthetic_products, args.synthetic_lists
        )
        E.check_features_version(data)  # before minutes of timing, not at fit()
        run = VALIDATED if args.data else REFIT
        cutoffs = run_cutoffs(data, run)
        table = pa.concat_tables(
            pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=E.TRAINING_COLUMNS)
            for c in cutoffs
        )
        config = TrainConfig(
            data=os.path.abspath(data),
            run=run,
            epochs=1,
            batch_size=args.batch_size,
            max_steps_per_epoch=args.steps,
            cutoffs=cutoffs,
            val_users=50,
            torch_threads=args.torch_threads,
        )
        # The loop and the model alone get the Ray worker's threads: only Ray's machinery differs.
        torch.set_num_threads(worker_threads(config, 1))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
        w = _worker(data, config)
        sizes = w.model_config.num_users, w.model_config.num_products
        model_rate = model_only(w, table, args.steps)
        plain = train_epoch(w, LocalShard(table), 1, torch.Generator().manual_seed(0), None)
        dist.destroy_process_group()
        ours = not ray.is_initialized()  # a caller's cluster (a test session's) is left running
        init_ray()
        through_ray = fit(config, storage_path=os.path.join(tmp, "runs"), name="throughput").metrics
        if ours:
            ray.shutdown()
    result = {
        "benchmark": "train_throughput",
        "tables": {"households": sizes[0], "products": sizes[1]},
        "lists_per_step": args.batch_size,
        "steps": {"plain_loop": plain["steps"], "ray_train": through_ray["steps"]},
        "torch_threads": torch.get_num_threads(),
        "model_only_candidates_per_s": round(model_rate),
        "plain_loop_candidates_per_s": round(plain["steady_examples_per_s"]),
        "ray_train_1_worker_candidates_per_s": round(through_ray["steady_examples_per_s"]),
        "ray_over_plain": round(through_ray["steady_examples_per_s"] / plain["steady_examples_per_s"], 3),
        # The same runs counted from the start, the input pipeline's first batch included.
        "plain_loop_with_start_candidates_per_s": round(plain["examples_per_s"]),
        "ray_train_with_start_candidates_per_s": round(through_ray["examples_per_s"]),
        "ray_first_step_seconds": round(through_ray["first_step_seconds"], 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
