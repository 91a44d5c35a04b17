"""The baselines' cost per household, ranked and scored as ``jobs.evaluate`` does, as JSON.

python -m bench.baseline_scoring --data DATA [--households 200] [--products 1000000]

Own and decayed frequency and TIFU-KNN (alone, and blended with 100 neighbours) rank
``--households`` households at the test period's start (depth 100, as the full ranking asks)
and score 100 products for each (as the sampled protocol asks), after one untimed pass (the
neighbours found once, as the tuning's alphas share them). The households are a seeded sample
of those with a purchase before that start, whether or not they shop in the test period (every
7th of the first ones in index order before session 67: the most active, as indices follow
purchase counts). ``--products`` pads the catalog with products no one bought to that many, so that the
cost of a catalog-long vector shows: the baselines now work on the household's products and its
neighbours', so their figures stay nearly flat where dense scores grew with the catalog.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ncf.data import layout
from ncf.evaluate.baselines import DecayedFrequencyRanker, OwnFrequencyRanker, PointInTime, TifuKnnRanker
from ncf.evaluate.protocol import period_start, ranker_fns, sample_users
from ncf.rank.state import RankingState
from ncf.splits import TEST

TIFU = {"groups": 7, "within_decay": 0.97, "across_decay": 0.9}


def measure(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of jobs.preprocess")
    p.add_argument(
        "--households",
        type=int,
        default=200,
        help="households timed (every 7th of those with a purchase before the test period's start)",
    )
    p.add_argument("--products", type=int, default=1_000_000, help="the catalog padded to this many products")
    args = p.parse_args(argv)
    start = period_start(TEST, layout.DataStats(args.data).boundaries)
    state = RankingState.load(args.data).as_of(start)
    out = {"households": 0, "catalogs": {}}
    for products in sorted({len(state.vocabs.products), args.products}):
        context = PointInTime.build(state.states, state.vocabs, start, args.data)
        padding = products - context.num_products
        if padding > 0:
            context.catalog = np.concatenate([context.catalog, np.ones(padding, bool)])
        users = [int(u) for u in sample_users(context.households(), args.households)]
        asked = np.random.default_rng(0).choice(context.num_products, 100, replace=False)
        rankers = {
            "own_frequency": OwnFrequencyRanker(context),
            "decayed_frequency": DecayedFrequencyRanker(context, 30.0),
            "tifu_knn_alone": TifuKnnRanker(context, **TIFU, alpha=1.0, neighbours=0),
            "tifu_knn_100_neighbours": TifuKnnRanker(context, **TIFU, alpha=0.7, neighbours=100),
        }
        figures = {}
        for name, ranker in rankers.items():
            figures[name] = _per_household(ranker, users, start, asked)
        out["households"] = len(users)
        out["catalogs"][str(context.num_products)] = figures
    return out


def _per_household(ranker, users: list, at: int, asked: np.ndarray) -> dict:
    """Milliseconds a household to rank (depth 100) and to score ``asked``, after an untimed pass."""
    rank, score = ranker_fns(ranker)
    for u in users:
        rank(u, at, 100)
    started = time.perf_counter()
    for u in users:
        rank(u, at, 100)
    ranked = time.perf_counter() - started
    started = time.perf_counter()
    for u in users:
        score(u, at, asked)
    scored = time.perf_counter() - started
    return {"rank_ms": round(ranked / len(users) * 1e3, 3), "score_ms": round(scored / len(users) * 1e3, 3)}


def main(argv=None) -> dict:
    row = measure(argv)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
