"""Serving and nightly scoring at catalog scale: a synthetic 1M households x 100k products x
20M purchases; a JSON line for each part as it lands, then the whole result as one JSON line.

python -m bench.scale [--users 1000000] [--products 100000] [--purchases-per-user 20] [--workdir artifacts/scale]
    [--index-depth 50]

* a Serve replica: resident memory once ready, seconds from deploy to healthy, CPU per
  ``/recommend`` (the replica's CPU time over a run of requests, read from /proc);
* the nightly job's scoring: households/s per core in one scoring process (one actor's work),
  steady (after its first batch), and that process's resident memory; eager and through
  ``torch.compile`` (what the nightly job's actors use when each has enough households);
  measured after Ray is stopped, so that its idle processes do not share the core;
* the same figures for Complete Journey when ``--cj-model``/``--cj-data`` are given, for the
  ratios.

The state is built with ``jobs.preprocess --state-only`` (vocabularies, compact purchases,
product stats); the model has seeded, untrained weights, except its MF tables with ``--mf als``
(the default): those are fitted by ``implicit``'s ALS on the synthetic purchases. Most costs do
not depend on the weights, but the first stage's HNSW search does: over the untrained model's
isotropic random vectors it costs about 4x what it does over trained ones (0.257 against 0.065
ms a search on Complete Journey's 68k products), and scoring with them was 1.11x slower than with
ALS-fitted ones (BENCHMARKS.md). ``--mf untrained`` measures the old way.
Inputs are kept under ``--workdir`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import requests

from bench.multinode_sweep import free_port
from bench.serve_load import cpu_used, local_session, serve_cpu_seconds
from ncf.data import datasets, schema
from ncf.data.preprocess import PreprocessConfig, preprocess
from ncf.model import ann
from ncf.model.config import ModelConfig
from ncf.model.directory import ModelDir, save_model_dir, save_untrained_model_dir, saves_index
from ncf.model.files import WEIGHTS

REQUESTS = 300
SCORING_BATCH = 512  # households per score_users call in the scoring process; the first is not timed


def build(workdir: str, users: int, products: int, per_user: int) -> tuple[str, str, dict]:
    """(model, data, seconds spent building them; empty when reused)."""
    root = os.path.join(workdir, f"u{users}-p{products}-l{per_user}")
    data, model = os.path.join(root, "data"), os.path.join(root, "model")
    if os.path.exists(os.path.join(model, "config.json")):
        return model, data, {}
    spec = datasets.SyntheticSpec(
        num_users=users, num_products=products, baskets_per_user=per_user / 5, basket_size=5, zipf_exponent=0.8, seed=3
    )
    started = time.time()
    logs, catalog = datasets.write_synthetic(os.path.join(root, "raw"), spec, users_per_file=50_000)
    generated = time.time()
    stats = preprocess(
        schema.resolve_files(logs), schema.resolve_files(catalog), data, PreprocessConfig(), state_only=True
    )
    preprocessed = time.time()
    save_untrained_model_dir(model, data, version="scale-untrained")
    return (
        model,
        data,
        {
            "purchases": stats["rows_kept"],
            "generate_s": round(generated - started),
            "preprocess_state_only_s": round(preprocessed - generated),
            "save_model_s": round(time.time() - preprocessed),
        },
    )


def mf_fitted_by_als(model: str, data: str) -> tuple[str, dict]:
    """(``model`` with its MF tables fitted by ALS on ``data``'s purchases, seconds spent; empty
    when reused). The rest of the model stays as it was: only the MF vectors' shape (what HNSW
    searches) changes what ranking costs."""
    import scipy.sparse as sp
    import torch
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from ncf.data import layout
    from ncf.data.user_state import UserStates

    output = model + "-als-mf"
    if os.path.exists(os.path.join(output, "config.json")):
        return output, {}
    started = time.time()
    handle = ModelDir(model)
    net = handle.load_model()
    c = net.config
    users, products, _ = UserStates.load(layout.user_state_dir(data)).all_purchases()
    counts = sp.coo_matrix(
        (np.ones(len(users), np.float32), (users, products)), shape=(c.num_users, c.num_products)
    ).tocsr()
    counts.sum_duplicates()
    with threadpool_limits(1, "blas"):  # implicit runs its own threads (see ncf.evaluate.baselines.als)
        als = AlternatingLeastSquares(
            factors=c.mf_embedding_dim, regularization=0.05, iterations=10, random_state=0, num_threads=2
        )
        als.fit(counts, show_progress=False)
    weights = net.state_dict()
    tables = "mf_embedding_collection.embedding_bags.{}_mf_embeddings.weight"
    for side, factors in (("user", als.user_factors), ("product", als.item_factors)):
        weights[tables.format(side)].copy_(torch.as_tensor(np.asarray(factors)[:, : c.mf_embedding_dim]))
    weights["mf_output.weight"].fill_(1.0)  # the MF logit is then the ALS score u . p
    # ... weighed positively by final, as a trained model's is: its untrained weight may be negative,
    # and the first stage would then list the products ALS scores lowest (ncf.model.ann).
    weights["final.0.weight"][0, 0] = weights["final.0.weight"][0, 0].abs()
    fitted = time.time()
    save_model_dir(
        output,
        weights,
        c,
        data,
        handle.trained_through,
        run="als-mf",
        version="scale-als-mf",
        rows_trained_before=handle.rows_trained_before,
    )
    return output, {"mf_als_fit_s": round(fitted - started), "mf_save_s": round(time.time() - fitted)}


def saved_index_depth(model: str):
    """efConstruction of ``model``'s saved MF index, as the index file says (None without one):
    a directory reused from an earlier run may hold a graph built at another depth than today's."""
    index = ann.load_if_present(model)
    return None if index is None else int(index.index.hnsw.efConstruction)


def with_index_depth(model: str, data: str, depth: int) -> str:
    """A copy of ``model`` whose MF index is built at efConstruction ``depth`` (``model`` itself
    at the code's depth), to compare serving and scoring over two graphs of the same vectors."""
    import torch

    saved = saved_index_depth(model)
    if saved == depth:
        return model
    handle = ModelDir(model)
    weights = torch.load(os.path.join(model, WEIGHTS), weights_only=True, map_location="cpu")
    model_config = ModelConfig.from_dict(handle.config["model"])
    if not saves_index(weights, model_config, handle.config.get("ranking")):
        note = f"[scale] {model}: too small for an MF index (its first stage is exact); --index-depth {depth} ignored"
        print(note, file=sys.stderr, flush=True)  # stdout holds the JSON lines
        return model
    output = f"{model}-ef{depth}"
    if os.path.exists(os.path.join(output, "config.json")):
        return output
    save_model_dir(
        output,
        weights,
        model_config,
        data,
        handle.trained_through,
        run=handle.config["run"],
        version=f"{handle.version}-ef{depth}",
        rows_trained_before=handle.rows_trained_before,
        index_depth=depth,
    )
    return output


def replica_rss_mib() -> float:
    """Resident memory of this cluster's Serve replica processes (MiB), from /proc."""
    from bench.serve_load import cluster_actor_pids

    total = 0
    for pid in cluster_actor_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ServeReplica" not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def serve_figures(model: str, data: str, users: list) -> dict:
    """Replica memory, start time and CPU per /recommend for one replica."""
    from ray import serve

    from serve.app import build_app
    from serve.launch import start, wait_until_healthy

    started = time.time()
    app = build_app({"model": model, "data": data, "default_at": "data-end", "min_replicas": 1, "max_replicas": 1})
    url = start(app, port=free_port())  # a fixed port may hold another Serve, which would answer instead
    try:
        wait_until_healthy(url, timeout_s=900)
        ready_s = time.time() - started
        rss = replica_rss_mib()
        with local_session() as session:
            for user in users[:20]:  # warm-up
                recommend(session, url, user)
            before = serve_cpu_seconds()
            for i in range(REQUESTS):
                recommend(session, url, users[i % len(users)])
            used = cpu_used(before, serve_cpu_seconds())
        replica_cpu = used.get("recommend_replicas", 0.0) + used.get("recommend_replicas_started", 0.0)
        if replica_cpu <= 0:  # no process matched a replica's name: a 0 here divides the summary by zero
            raise RuntimeError(f"no Serve replica's CPU time was found among {sorted(used)}")
        return {
            "replica_ready_s": round(ready_s, 1),
            "replica_rss_mib": round(rss),
            "replica_cpu_ms_per_recommend": round(1000 * replica_cpu / REQUESTS, 2),
        }
    finally:
        serve.shutdown()


def recommend(session: requests.Session, url: str, user) -> None:
    """One /recommend; any answer but 200 stops the run: the CPU per request would be a refusal's."""
    response = session.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/recommend answered {response.status_code}: {response.text[:500]}")


def scoring_figures(model: str, data: str, users: int, compiled: bool = False) -> dict:
    """One scoring process (a nightly actor's work) on ``users`` households: households/s on one
    core after the first batch of 512 (steady, as the nightly job reports it; None where the state
    holds no second batch), the first batch's seconds (with ``compiled``, the torch.compile
    compilation is paid there) and the process's peak resident memory; in a subprocess so its
    memory is its own. One core means one torch thread and one OpenMP thread for FAISS's search,
    what Ray gives a 1-CPU actor (OMP_NUM_THREADS=1); FAISS would otherwise search on every core."""
    code = (
        "import json, sys, time, numpy as np, pyarrow as pa, torch\n"
        "torch.set_num_threads(1)\n"
        "from ncf.batch.scorer import score_users\n"
        "from ncf.evaluate.protocol import sample_users\n"
        "from ncf.rank.recommender import Recommender\n"
        f"rec = Recommender.load({model!r}, data={data!r})\n"
        + ("rec.ranker.compile()\n" if compiled else "")
        # A seeded sample: households are indexed by their purchases, so the first ones are the most active.
        + f"positions = sample_users(rec.state.states.users(), {users})\n"
        "ids = pa.array(rec.vocabs.users.raw_of(positions))\n"
        "loaded = time.time()\n"
        "first = None\n"
        f"for start in range(0, len(ids), {SCORING_BATCH}):\n"
        f"    batch = slice(start, start + {SCORING_BATCH})\n"
        f"    users = ids.slice(start, {SCORING_BATCH})\n"
        "    score_users(rec, users, 10, rec.default_at, rec.default_at, positions[batch])\n"
        "    first = first or time.time()\n"
        "end = time.time()\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent's.
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        # No second batch, no steady rate (the first batch is not timed).
        f"steady = (len(ids) - {SCORING_BATCH}) / (end - first) if len(ids) > {SCORING_BATCH} else None\n"
        "print(json.dumps({'steady': steady, 'first_batch_s': first - loaded, 'peak_rss_mib': hwm / 1024}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    prefix = "nightly_compiled" if compiled else "nightly"
    return {
        f"{prefix}_users_per_s_per_core": None if result["steady"] is None else round(result["steady"], 1),
        f"{prefix}_first_batch_s": round(result["first_batch_s"], 1),
        f"{prefix}_actor_peak_rss_mib": round(result["peak_rss_mib"]),
    }


def measure_serving(model: str, data: str) -> dict:
    from ncf.rank.recommender import Recommender

    recommender = Recommender.load(model, data=data)
    users = recommender.vocabs.users.raw_of(np.random.default_rng(0).choice(recommender.state.states.users(), 200))
    del recommender
    serving = serve_figures(model, data, users)
    print(json.dumps({"serving": model, **serving}), flush=True)  # a line per part, as it lands
    return serving


def measure_scoring(model: str, data: str, sample: int) -> dict:
    scoring = {**scoring_figures(model, data, sample), **scoring_figures(model, data, sample, compiled=True)}
    print(json.dumps({"scoring": model, **scoring}), flush=True)
    return scoring


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--products", type=int, default=100_000)
    p.add_argument("--purchases-per-user", type=int, default=20)
    p.add_argument(
        "--scoring-users",
        type=int,
        default=20_000,
        help=f"households the scoring process ranks (more than {SCORING_BATCH}: its first batch is not timed)",
    )
    p.add_argument("--cj-model", default=None, help="a Complete Journey model directory, for the ratios")
    p.add_argument("--cj-data", default=None, help="its DATA")
    p.add_argument("--workdir", default="artifacts/scale")
    p.add_argument(
        "--mf",
        choices=("als", "untrained"),
        default="als",
        help="the synthetic model's MF tables: fitted by ALS on the log (what HNSW searches over a trained "
        "model looks like) or left untrained (isotropic vectors: HNSW's worst case)",
    )
    p.add_argument(
        "--index-depth",
        type=int,
        default=ann.BUILD_DEPTH,
        help="efConstruction of the MF index the scale model is measured with (another than the code's "
        "saves a copy of the model directory with that index, MODEL-efN)",
    )
    args = p.parse_args(argv)
    if (args.cj_model is None) != (args.cj_data is None):
        p.error("--cj-model and --cj-data go together (the Complete Journey comparison needs both)")
    if args.scoring_users <= SCORING_BATCH:
        p.error(f"--scoring-users {args.scoring_users} leaves no timed batch: ask for more than {SCORING_BATCH}")
    import ray

    from jobs.cli import init_ray

    init_ray(num_cpus=2)
    model, data, built = build(args.workdir, args.users, args.products, args.purchases_per_user)
    if args.mf == "als":
        model, fitted = mf_fitted_by_als(model, data)
        built.update(fitted)
    model = with_index_depth(model, data, args.index_depth)
    result = {
        "benchmark": "scale",
        "households": args.users,
        "products": args.products,
        "mf": args.mf,
        "index_build_depth": saved_index_depth(model),  # read from the index measured, not the option
        **built,
    }
    runs = {"scale": (model, data)}
    if args.cj_model:
        runs["completejourney"] = (args.cj_model, args.cj_data)
    for name, (model_dir, data_dir) in runs.items():
        result[name] = measure_serving(model_dir, data_dir)
    # The scoring processes run with Ray stopped: its own processes (GCS, raylet, dashboard, idle
    # workers) take about a fifth of a core even idle, a share of this 2-core machine that a
    # nightly actor on a cluster node does not give up.
    ray.shutdown()
    for name, (model_dir, data_dir) in runs.items():
        result[name].update(measure_scoring(model_dir, data_dir, args.scoring_users))
    if "completejourney" in result:
        cj, big = result["completejourney"], result["scale"]
        result["cpu_per_recommend_vs_cj"] = round(
            big["replica_cpu_ms_per_recommend"] / cj["replica_cpu_ms_per_recommend"], 2
        )
    result["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
