"""Two-stage ranking against brute-force full scoring: top-10 overlap and speed, as JSON.

python -m bench.two_stage_agreement --model MODEL [--users 100] [--candidates N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from ncf.rank.recommender import Recommender


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=None, help="re-ranked candidates (default: the model's setting)")
    args = p.parse_args(argv)
    recommender = Recommender.load(args.model)
    if args.candidates:
        recommender.settings = dataclasses.replace(recommender.settings, candidates=args.candidates)
    users = np.random.default_rng(0).choice(recommender.states.users(), size=args.users, replace=False)
    overlaps, fast_s, brute_s = [], 0.0, 0.0
    for user in users.tolist():
        started = time.perf_counter()
        fast = recommender.rank_indices(user, k=args.k).products
        fast_s += time.perf_counter() - started
        started = time.perf_counter()
        brute = recommender.rank_indices(user, k=args.k, brute_force=True).products
        brute_s += time.perf_counter() - started
        overlaps.append(len(set(fast.tolist()) & set(brute.tolist())) / args.k)
    result = {
        "benchmark": "two_stage_agreement",
        "users": args.users,
        "catalog": recommender.num_products - 1,
        "candidates": recommender.settings.candidates,
        f"mean_top{args.k}_overlap": round(float(np.mean(overlaps)), 4),
        f"min_top{args.k}_overlap": round(float(np.min(overlaps)), 4),
        "two_stage_users_per_s": round(args.users / fast_s, 1),
        "brute_force_users_per_s": round(args.users / brute_s, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
