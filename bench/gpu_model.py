"""The model on a GPU against the CPU, in one process without Ray, as JSON lines: the scoring path
(what a nightly job's GPU actor and a Serve replica on a GPU node do) and the training step.

python -m bench.gpu_model --model MODEL [--data DATA] [--users 0] [--batch 512] [--single 200]
    [--lists FILE --steps 60 --train-lists 32,128,256] [--profile 1024] [--no-compile]

* households/s of :func:`ncf.batch.scorer.score_users` in batches of ``--batch`` (steady, after
  the first batch): on one CPU thread (a 1-CPU actor's work), on every core (the driver's), on
  CUDA eager with one host thread (a GPU actor of 1 CPU) and with every core (the driver on its
  GPU), and on CUDA through ``torch.compile`` with one host thread; and the ratios that
  ``ncf.batch.scoring.GPU_ACTOR_SPEEDUP`` is read from;
* how CUDA's lists agree with the CPU's: households whose top-10 is the same list, the mean
  top-10 overlap, and the largest score difference on products both ranked (float32 on both;
  summation order differs between the devices);
* one household per call through :meth:`Recommender.recommend` (a replica's ``/recommend``):
  median and p95 milliseconds on one thread, on the CPU and on CUDA;
* with ``--lists`` (a Parquet file of training lists, ``DATA/examples/cutoff=*/lists-*.parquet``):
  candidates/s of :func:`ncf.train.loop.training_step` (bf16 autocast on CUDA, as training runs)
  on every CPU core and on CUDA at each ``--train-lists`` size, from the model's weights, each
  step the file's next lists (wrapping around; ``lists_per_step`` is what a step held), and the
  first step's loss on each (seeded; the devices' dropout masks differ, so the two first losses
  agree only roughly, not as a measure of bf16's error). The tables are unsharded here, so
  plain Adam updates them whole: the training job's tables train on fbgemm's fused kernels
  (row-wise Adagrad inside the backward pass), whose CUDA build this bench does not need. The
  figure is the model's step, not the job's;
* with ``--profile N``: where N households' eager scoring spends its time on one thread, on each
  device (cProfile).

Without CUDA it prints the CPU figures and ``"cuda": false``. A steady rate needs a second
batch: ``--users`` at most ``--batch`` is refused, and a state of at most ``--batch`` households
reports ``null`` (and no ratio). Timings are wall-clock; on CUDA each
batch ends with the lists on the host, so the device's work is inside the timing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ncf.batch.scorer import score_users
from ncf.data.features import Catalog
from ncf.evaluate.protocol import sample_users
from ncf.model.batch import Batch
from ncf.model.directory import load_model
from ncf.rank.recommender import Recommender
from ncf.train.config import TrainConfig
from ncf.train.loop import training_step

BATCH = 512
K = 10


def use_threads(n: int) -> None:
    """``n`` threads for torch and for FAISS, which ships its own OpenMP runtime that torch's
    setting does not reach (an HNSW first stage searched on every core in the "1 thread" rows)."""
    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:  # a device machine's carried wheels may leave it out: exact lists only then
        return
    faiss.omp_set_num_threads(n)


def emit(record: Dict) -> None:
    print(json.dumps(record), flush=True)


def score_all(recommender: Recommender, positions: np.ndarray, batch_size: int = BATCH) -> tuple[Dict, pa.Table]:
    """Every household of ``positions`` in batches of ``batch_size``: steady households/s (after
    the first batch, which pays warm-up and compilation; None when there is no second batch) and
    the first batch's seconds."""
    ids = pa.array(recommender.vocabs.users.raw_of(positions))
    at = recommender.default_at
    started = time.perf_counter()
    first: Optional[float] = None
    tables: List[pa.Table] = []
    for start in range(0, len(ids), batch_size):
        batch = slice(start, start + batch_size)
        tables.append(score_users(recommender, ids.slice(start, batch_size), K, at, at, positions[batch]))
        first = first or time.perf_counter()
    end = time.perf_counter()
    timed = len(ids) - min(batch_size, len(ids))
    steady = round(timed / (end - first), 1) if timed and end > first else None
    return {"users_per_s": steady, "first_batch_s": round(first - started, 2)}, pa.concat_tables(tables)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """``numerator / denominator`` to 2 places; None where either is missing or zero."""
    return round(numerator / denominator, 2) if numerator is not None and denominator else None


def agreement(reference: pa.Table, other: pa.Table) -> Dict:
    """How ``other``'s top-10 lists match ``reference``'s, household by household."""
    ref = reference.to_pandas().groupby("user_id", sort=False)
    oth = {u: g for u, g in other.to_pandas().groupby("user_id", sort=False)}
    same, overlaps, diffs = 0, [], []
    for user, group in ref:
        a, b = group["product_id"].tolist(), oth[user]["product_id"].tolist()
        same += a == b
        overlaps.append(len(set(a) & set(b)) / K)
        both = group.merge(oth[user], on="product_id", suffixes=("_ref", "_other"))
        if len(both):
            diffs.append(float(np.abs(both["score_ref"] - both["score_other"]).max()))
    return {
        "identical_lists": round(same / max(1, len(overlaps)), 4),
        "mean_overlap": round(float(np.mean(overlaps)), 4),
        "max_score_diff": float(max(diffs)) if diffs else None,
    }


def single_latency(recommender: Recommender, users: List, warm: int = 10) -> Dict:
    """One household per call, as a replica answers ``/recommend``: median and p95 ms."""
    for user in users[:warm]:
        recommender.recommend([user], k=K)
    times = []
    for user in users:
        started = time.perf_counter()
        recommender.recommend([user], k=K)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "single_p50_ms": round(float(np.median(times)), 2),
        "single_p95_ms": round(float(np.percentile(times, 95)), 2),
    }


def profiled(recommender: Recommender, positions: np.ndarray, batch_size: int, top: int = 12) -> Dict:
    """Where scoring's time goes under cProfile: the shares of the whole spent assembling the
    model's inputs (``Ranker._batch``) and in the model (its ``logits`` call, and on CUDA the wait
    for its results, which ``Tensor.cpu`` pays), and the functions with the most time of their own
    (seconds)."""
    profile = cProfile.Profile()
    profile.enable()
    score_all(recommender, positions, batch_size)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(row[2] for row in stats.values())

    def cumulative(file_end: str, name: str, column: int = 3) -> float:
        return sum(row[column] for (path, _, fn), row in stats.items() if path.endswith(file_end) and fn == name)

    model = cumulative("advanced_ncf.py", "logits") + cumulative(
        "~", "<method 'cpu' of 'torch._C.TensorBase' objects>", 2
    )
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    return {
        "inputs_share": round(cumulative("ranker.py", "_batch") / total, 3),
        "model_share": round(model / total, 3),
        "own_seconds": {
            f"{os.path.basename(path)}:{line}({name})": round(row[2], 3) for (path, line, name), row in rows
        },
    }


def step_rows(lists: pa.Table, step: int, size: int) -> pa.Table:
    """Step ``step``'s lists: the next ``size`` of the file after the previous step's, wrapping
    around its end (every step a new window while the file holds more than ``size``); all of
    them, once each, where it holds fewer."""
    size = min(size, len(lists))
    return lists.take(pa.array((step * size + np.arange(size)) % len(lists)))


def training_steps(
    model_dir: str, lists: pa.Table, catalog: Catalog, device: torch.device, steps: int, size: int
) -> Dict:
    """``steps`` training steps of ``size`` lists each (after one warm-up step; fewer where the
    file holds fewer, as ``lists_per_step`` says): candidates/s and the first step's loss, from
    the model's saved weights. Seeded: the same device gives the same first loss run to run (the
    CPU's and CUDA's dropout masks come from different generators, so theirs differ anyway)."""
    model = load_model(model_dir, device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=TrainConfig.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # dropout's masks (CPU and CUDA generators both)
    share = TrainConfig.unknown_share
    losses, seen, started = [], 0, 0.0
    for step in range(steps + 1):
        rows = step_rows(lists, step, size)
        batch = Batch.from_arrow(rows, catalog).with_history_length(model.config.history_length)
        batch = batch.with_unknown_rows(generator, share, share).to(device)
        losses.append(float(training_step(model, optimizer, batch, loss_fn).detach()))
        if step == 0:
            started = time.perf_counter()  # after the first step: allocations, kernel choice
        else:
            seen += batch.num_candidates
    seconds = time.perf_counter() - started
    return {
        "lists_per_step": min(size, len(lists)),
        "candidates_per_s": round(seen / seconds),
        "first_loss": round(losses[0], 5),
        "finite": bool(np.isfinite(losses).all()),
    }


def run(args) -> Dict:
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        use_threads(threads)


def _run(args) -> Dict:
    cuda = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    emit(
        {
            "benchmark": "gpu_model",
            "torch": torch.__version__,
            "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cpu_cores": cores,
        }
    )
    summary: Dict = {"benchmark": "gpu_model", "cuda": cuda}
    cpu = Recommender.load(args.model, data=args.data, device=torch.device("cpu"))
    positions = cpu.state.states.users()
    # Seeded samples: households are indexed by their purchases, so the first ones are the most active.
    positions = sample_users(positions, args.users or None)
    single_users = list(cpu.vocabs.users.raw_of(sample_users(positions, args.single, seed=1)))
    profiled_positions = sample_users(positions, args.profile or None, seed=2)
    summary["households"] = int(len(positions))

    def step(name: str, figures: Dict) -> None:
        summary[name] = figures
        emit({"step": name, **figures})

    # One thread is what Ray gives a 1-CPU actor, with or without a GPU (OMP_NUM_THREADS=1).
    use_threads(1)
    figures, reference = score_all(cpu, positions, args.batch)
    step("cpu_1_thread", {**figures, **single_latency(cpu, single_users)})
    if args.profile:
        step("profile_cpu_1_thread", profiled(cpu, profiled_positions, args.batch))
    use_threads(cores)
    step(f"cpu_{cores}_threads", score_all(cpu, positions, args.batch)[0])
    if args.lists:
        lists = pq.read_table(args.lists)
        catalog = cpu.state.catalog
        summary["lists_in_file"] = len(lists)
        # Each size on both devices: a ratio at a size divides CUDA's rate by the CPU's at that size.
        for size in args.train_lists:
            figures = training_steps(args.model, lists, catalog, torch.device("cpu"), args.steps, size)
            step(f"train_cpu_{cores}_threads_{size}_lists", figures)
            if cuda:
                figures = training_steps(args.model, lists, catalog, torch.device("cuda"), args.steps, size)
                step(f"train_cuda_bf16_{size}_lists", figures)
                summary[f"train_cuda_over_cpu_{size}_lists"] = ratio(
                    figures["candidates_per_s"], summary[f"train_cpu_{cores}_threads_{size}_lists"]["candidates_per_s"]
                )
    if not cuda:
        return summary

    gpu = Recommender.load(args.model, data=args.data, device=torch.device("cuda"))
    torch.cuda.reset_peak_memory_stats()  # scoring's own peak, not the training steps'
    use_threads(1)  # a GPU actor of 1 CPU: the host's work on one thread
    figures, listed = score_all(gpu, positions, args.batch)
    step(
        "cuda_eager_1_thread",
        {
            **figures,
            **single_latency(gpu, single_users),
            **agreement(reference, listed),
            "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        },
    )
    if args.profile:
        step("profile_cuda_eager_1_thread", profiled(gpu, profiled_positions, args.batch))
    use_threads(cores)  # the driver scoring on its own GPU (--score-in driver --gpu yes)
    step(f"cuda_eager_{cores}_threads", score_all(gpu, positions, args.batch)[0])
    if args.compile:
        use_threads(1)
        gpu.ranker.compile()
        figures, listed = score_all(gpu, positions, args.batch)
        step("cuda_compiled_1_thread", {**figures, **agreement(reference, listed)})
    one = summary["cuda_eager_1_thread"]["users_per_s"]
    summary["gpu_actor_over_cpu_actor"] = ratio(one, summary["cpu_1_thread"]["users_per_s"])
    every = summary[f"cuda_eager_{cores}_threads"]["users_per_s"]
    summary["gpu_driver_over_cpu_driver"] = ratio(every, summary[f"cpu_{cores}_threads"]["users_per_s"])
    return summary


def sizes(text: str) -> List[int]:
    values = [int(v) for v in text.split(",")]
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"lists per step must be at least 1: {text}")
    return values


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", help="output of jobs.preprocess (its state is enough; default: the model's own state)")
    p.add_argument("--users", type=int, default=0, help="households scored (0 = every household of the state)")
    p.add_argument("--batch", type=int, default=BATCH, help="households per scoring call (the first is not timed)")
    p.add_argument("--single", type=int, default=200, help="households asked one per call")
    p.add_argument("--lists", help="a Parquet file of training lists (DATA/examples/cutoff=*/lists-*.parquet)")
    p.add_argument("--steps", type=int, default=60, help="training steps timed on each device (at least 1)")
    p.add_argument(
        "--train-lists",
        type=sizes,
        default=[TrainConfig.batch_size],
        help="lists per training step, comma-separated: each size on the CPU and on CUDA",
    )
    p.add_argument("--profile", type=int, default=0, help="households scored under cProfile on each device (0: none)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile run on CUDA")
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        p.error("--batch and --steps must be at least 1")
    if 0 < args.users <= args.batch:  # the first batch is not timed: no steady rate to report
        p.error(f"--users {args.users} leaves no timed batch: ask for more than --batch ({args.batch})")
    summary = run(args)
    emit(summary)
    return summary


if __name__ == "__main__":
    main()
