"""Two-stage ranking against brute-force full scoring: top-10 overlap and speed, as JSON.

python -m bench.two_stage_agreement --model MODEL [--data DATA] [--users 100] [--candidates N] [--first-stage hnsw]
    [--exclude-purchased]

``--first-stage hnsw`` ranks the MF first stage with the FAISS HNSW index, as a catalog whose
households' exact lists do not fit the cache does (Complete Journey's fit, so by default they are
exact). ``first_stage`` says what ranked it: ``exact, kept`` (every household's exact list
computed once and kept), ``HNSW`` (the index's graph searched), ``exact`` (lists computed exactly
at each call and not kept: where the index allows so few of its rows that
:meth:`ncf.model.ann.ProductIndex.search` ranks them exactly instead, or where the stage was
built without an index) or ``none`` (a model without an MF path has no MF first stage).
``--exclude-purchased`` compares rankings of products new to each household, where the
household's own products, which dominate the plain rankings, are no candidates.

Speeds are a warm ranker's, as Serve's replicas rank: every household's MF list computed first
(``Ranker.warm``, what Serve does when it loads a model) and one untimed call of each kind; then
the two-stage calls timed in one loop and brute force's in another, one household a call.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ncf.model import ann
from ncf.rank.ranker import check_k
from ncf.rank.recommender import Recommender


def first_stage(ranker) -> str:
    """What ranks ``ranker``'s MF first stage (the module docstring lists the labels)."""
    mf = ranker.candidates.mf
    if mf is None:
        return "none"
    if mf.cached:
        return "exact, kept"
    return "HNSW" if mf.searches_graph else "exact"


def measure(argv=None) -> dict:
    """The figures, printed by :func:`main` (``bench.batch_scoring`` folds them into its own line)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", default=None, help="DATA whose histories to rank from (default: the model's state)")
    p.add_argument("--users", type=int, default=100, help="households sampled (seeded)")
    p.add_argument("--k", type=int, default=10, help="top-k compared")
    p.add_argument("--candidates", type=int, default=None, help="re-ranked candidates (default: the model's setting)")
    p.add_argument("--first-stage", choices=["auto", "hnsw"], default="auto", help="auto: exact lists when they fit")
    p.add_argument("--exclude-purchased", action="store_true", help="rank only products new to each household")
    args = p.parse_args(argv)
    try:
        check_k(args.k)
    except ValueError as e:
        p.error(f"--k: {e}")
    cache_entries = ann.MF_CACHE_MAX_ENTRIES
    if args.first_stage == "hnsw":
        ann.MF_CACHE_MAX_ENTRIES = 0
    try:
        recommender = Recommender.load(args.model, data=args.data)
        if args.candidates:  # a new first stage: built under the same setting
            recommender = recommender.with_settings(candidates=args.candidates)
    finally:  # the setting is read when the first stage is built: later callers get the default
        ann.MF_CACHE_MAX_ENTRIES = cache_entries
    ranker, at = recommender.ranker, recommender.default_at
    # As Serve has it before its first request: every household's MF list computed (Serve warms
    # them when it loads a model; otherwise each household's first ranking pays for its own list),
    # and one untimed call of each kind for torch's and the ranker's first-call set-up.
    ranker.warm()
    known = ranker.state.states.users()
    users = np.random.default_rng(0).choice(known, size=min(args.users, len(known)), replace=False).tolist()
    ranker.rank(users[:1], [at], k=args.k, exclude_purchased=args.exclude_purchased)
    ranker.rank(users[:1], [at], args.k, args.exclude_purchased, brute_force=True)
    # Each kind timed in a loop of its own (one household per call, as a /recommend asks).
    started = time.perf_counter()
    fast = [ranker.rank([u], [at], k=args.k, exclude_purchased=args.exclude_purchased)[0].products for u in users]
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    brute = [ranker.rank([u], [at], args.k, args.exclude_purchased, brute_force=True)[0].products for u in users]
    brute_s = time.perf_counter() - started
    overlaps = [len(set(f.tolist()) & set(b.tolist())) / args.k for f, b in zip(fast, brute)]
    result = {
        "benchmark": "two_stage_agreement",
        "users": len(users),
        "catalog": int(ranker.candidates.known.sum()),
        "candidates": ranker.settings.candidates,
        "exclude_purchased": args.exclude_purchased,
        "first_stage": first_stage(ranker),
        f"mean_top{args.k}_overlap": round(float(np.mean(overlaps)), 4),
        f"min_top{args.k}_overlap": round(float(np.min(overlaps)), 4),
        "two_stage_users_per_s": round(len(users) / fast_s, 1),
        "brute_force_users_per_s": round(len(users) / brute_s, 2),
    }
    return result


def main(argv=None) -> dict:
    result = measure(argv)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
