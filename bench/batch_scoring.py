"""Nightly batch scoring: users/s on Complete Journey and on synthetic catalogs of growing size
(how the cost grows with the catalog), the Complete Journey checks, and two-stage against
brute-force agreement, as one JSON line, the last of stdout (preprocessing's log lines come
before it when a synthetic dataset is built). Complete Journey is scored twice by actors on the
same cluster (the first job on a fresh cluster, then the next one: a nightly job's usual case),
then in the driver (``--score-in driver``, what ``auto`` picks for small datasets); each
synthetic catalog by actors, then in the driver. The synthetic datasets are built first, in a
Ray session of their own, so that Complete Journey's first job meets a cluster nothing ran on.

python -m bench.batch_scoring [--catalogs 10000 100000] [--synthetic-users 1000]
    [--agreement-users 20] [--cj-model artifacts/demo/model --cj-data artifacts/demo/data]

Outputs go under ``--workdir`` (default artifacts/batch/bench); the synthetic datasets and
models there are reused by later runs (delete the folder to rebuild them). Synthetic models
have seeded, untrained weights: their throughput is real, their agreement figure only shows
how the two-stage ranking behaves when the MF path knows nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ray

from bench import two_stage_agreement
from jobs.cli import init_ray
from ncf.batch.scoring import BatchScoreConfig, run_batch_scoring
from ncf.batch.verify import verify_partition
from ncf.data import datasets, layout, schema
from ncf.data.preprocess import PreprocessConfig, preprocess
from ncf.data.vocab import Vocabularies
from ncf.model.directory import save_untrained_model_dir

K = 10


def synthetic_model(workdir: str, products: int, users: int) -> tuple[str, str, float]:
    """A preprocessed synthetic dataset and a model with seeded weights on it: (model, data,
    preprocessing seconds, 0 when reused)."""
    # Flatter popularity, fewer staples and more lines than the defaults, so that nearly the
    # whole catalog is bought and so ranked.
    spec = datasets.SyntheticSpec(
        num_users=users,
        num_products=products,
        baskets_per_user=45,
        basket_size=10,
        staple_share=0.2,
        zipf_exponent=0.5,
        seed=1,
    )
    root = os.path.join(workdir, f"synthetic-{products}p-{users}u-{spec.expected_lines}l")
    data, model = os.path.join(root, "data"), os.path.join(root, "model")
    if os.path.exists(os.path.join(model, "config.json")):
        return model, data, 0.0
    logs, catalog = datasets.write_synthetic(os.path.join(root, "raw"), spec)
    started = time.perf_counter()
    # The state only: scoring reads vocabularies, histories and product stats, not training lists.
    preprocess(schema.resolve_files(logs), schema.resolve_files(catalog), data, PreprocessConfig(), state_only=True)
    seconds = time.perf_counter() - started
    save_untrained_model_dir(model, data, version="synthetic-untrained")
    return model, data, seconds


def score(model: str, data: str, output: str, score_in: str = "actors") -> tuple[dict, str]:
    """The run's figures and its run date."""
    config = BatchScoreConfig(model=model, data=data, output=output, k=K, at="data-end", score_in=score_in)
    summary = run_batch_scoring(config)
    figures = ("users", "rows", "seconds", "users_per_s", "steady_users_per_s", "scored_in")
    return {key: summary[key] for key in figures}, summary["run_date"]


def agreement(model: str, data: str, users: int) -> dict:
    result = two_stage_agreement.measure(["--model", model, "--data", data, "--users", str(users), "--k", str(K)])
    return {key: value for key, value in result.items() if key != "benchmark"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--cj-model", default="artifacts/demo/model")
    p.add_argument("--cj-data", default="artifacts/demo/data")
    p.add_argument("--catalogs", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--synthetic-users", type=int, default=1_000)
    p.add_argument("--agreement-users", type=int, default=20)
    p.add_argument(
        "--verify-users", type=int, default=50, help="Complete Journey users compared with Recommender.recommend"
    )
    p.add_argument("--workdir", default="artifacts/batch/bench")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Preprocessing first: pyarrow crashed (SIGSEGV in an aggregate) preprocessing in a driver
    # that had already scored with torch; a fresh driver has not. In a cluster of its own:
    # preprocessing starts Ray Data's workers and detached actors, which the first scoring job
    # below would otherwise find running (a fresh-cluster run only when the workdir had them all).
    init_ray(num_cpus=2)
    synthetic = {products: synthetic_model(args.workdir, products, args.synthetic_users) for products in args.catalogs}
    ray.shutdown()
    init_ray(num_cpus=2)
    cpus = int(ray.cluster_resources().get("CPU", 0))  # Ray's, which the actors share; not the machine's
    result = {"benchmark": "batch_scoring", "cpus": cpus, "machine_cores": os.cpu_count(), "k": K}
    if not os.path.exists(os.path.join(args.cj_model, "config.json")):
        left_out = f"[batch_scoring] {args.cj_model} holds no model: the Complete Journey figures are left out"
        print(left_out, file=sys.stderr, flush=True)
    else:
        # A folder per run: they share a run date, and the partition verified must be the
        # actors' first run, whose figures are the headline, not a later run's over it.
        output = os.path.join(args.workdir, "cj")
        run, run_date = score(args.cj_model, args.cj_data, output)
        # A nightly job runs on a cluster that has run jobs before: Ray Data's own detached
        # actors (its stats, autoscaling coordinator and actor-location tracker) exist by then,
        # where the first job on a fresh cluster starts them.
        again, _ = score(args.cj_model, args.cj_data, os.path.join(args.workdir, "cj-next-job"))
        # What `--score-in auto` picks below DRIVER_MAX_USERS: no actors to start.
        here, _ = score(args.cj_model, args.cj_data, os.path.join(args.workdir, "cj-in-driver"), score_in="driver")
        check = verify_partition(output, run_date, args.cj_data, sample=args.verify_users)
        result["completejourney"] = {
            **run,
            "next_job_on_the_cluster": again,
            "in_the_driver": here,
            "verify": check,
            "agreement": agreement(args.cj_model, args.cj_data, args.agreement_users),
        }
    for products, (model, data, prep_s) in synthetic.items():
        run, _ = score(model, data, os.path.join(args.workdir, f"out-{products}p"))
        here, _ = score(model, data, os.path.join(args.workdir, f"out-{products}p"), score_in="driver")
        ranked = len(Vocabularies.load(layout.vocab_dir(data)).products) - 1
        result[f"synthetic_{products}_products"] = {
            **run,
            "in_the_driver": here,
            "products_ranked": ranked,
            "preprocess_seconds": round(prep_s, 1),
            "agreement_untrained": agreement(model, data, args.agreement_users),
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
