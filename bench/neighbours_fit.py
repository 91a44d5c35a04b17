"""The co-purchase neighbours' fit and lookups at a size, as JSON.

python -m bench.neighbours_fit [--households 1000000] [--products 100000] [--per-household 20]

Draws ``per-household`` products for each household by Zipf popularity (exponent 1.1, as the
synthetic log; draws repeat, so ``pairs`` counts the distinct (household, product) pairs), fits
:class:`ncf.data.neighbours.ProductNeighbours` (what each products' stats pass does at a
cutoff, on one thread) and times a household's :meth:`best` (100) plus :meth:`scores` of 300
candidates, as the first stage and the feature path call them. Peak resident memory is the
process's, drawing included.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from jobs.cli import positive_int
from ncf.data.neighbours import NEIGHBOURS_K, ProductNeighbours

LOOKUPS = 1000


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--households", type=positive_int, default=1_000_000)
    p.add_argument("--products", type=positive_int, default=100_000)
    p.add_argument("--per-household", type=positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    popularity = 1.0 / np.arange(1, args.products) ** 1.1
    households = np.repeat(np.arange(args.households, dtype=np.int64), args.per_household)
    products = rng.choice(np.arange(1, args.products), size=len(households), p=popularity / popularity.sum())

    started = time.perf_counter()
    neighbours = ProductNeighbours.fit(households, products, args.products, NEIGHBOURS_K)
    fit_s = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(LOOKUPS):
        own = products[i * args.per_household : (i + 1) * args.per_household]
        neighbours.best(own, 100)
        neighbours.scores(own, products[-300 - i : len(products) - i])
    lookup_ms = (time.perf_counter() - started) / LOOKUPS * 1000
    row = {
        "benchmark": "neighbours_fit",
        "households": args.households,
        "products": args.products,
        "draws": len(households),
        "pairs": len(np.unique(households * args.products + products)),
        "k": NEIGHBOURS_K,
        "fit_s": round(fit_s, 2),
        "lookup_ms": round(lookup_ms, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "kept": len(neighbours.indices),
    }
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
