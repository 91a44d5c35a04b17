"""The co-purchase neighbours' fit and lookups at a size, as JSON.

python -m bench.neighbours_fit [--households 1000000] [--products 100000] [--per-household 20]
    [--tastes 0] [--max-work N] [--compare-full]

Draws ``per-household`` products for each household by Zipf popularity (exponent 1.1, as the
synthetic log; draws repeat, so ``pairs`` counts the distinct (household, product) pairs); with
``--tastes T`` the products fall into T sets and each household draws 80% of its products from
its own set, so that products have true neighbours. It fits
:class:`ncf.data.neighbours.ProductNeighbours` as each products' stats pass does at a cutoff, on
one thread: the distinct pairs handed to :class:`~ncf.data.neighbours.SampledPairs` a chunk at
a time (every household while their work stays within ``--max-work``, default
:data:`~ncf.data.neighbours.NEIGHBOURS_MAX_WORK`), then fitted as rows. ``--compare-full`` fits on
every household as well and reports the share of the full fit's neighbours the sampled fit finds
too (products bought by at least 20 households). Then it times a household's :meth:`best`
(100) plus :meth:`scores` of 300 candidates, as the first stage and the feature path call them.
``fit_peak_rss_gib`` is the process's peak resident memory from the fit's start to its end (the
pairs drawn before it included), ``peak_rss_gib`` the whole run's, drawing included.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jobs.cli import positive_int
from ncf.data.neighbours import NEIGHBOURS_K, NEIGHBOURS_MAX_WORK, ProductNeighbours, SampledPairs
from ncf.data.timeline import run_offsets

LOOKUPS = 1000
CHUNK_PAIRS = 4_000_000
TASTE_SHARE = 0.8
COMPARED_BUYERS = 20


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--households", type=positive_int, default=1_000_000)
    p.add_argument("--products", type=positive_int, default=100_000)
    p.add_argument("--per-household", type=positive_int, default=20)
    p.add_argument("--tastes", type=int, default=0)
    p.add_argument("--max-work", type=float, default=NEIGHBOURS_MAX_WORK)
    p.add_argument("--compare-full", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.households < LOOKUPS:  # the timed lookups take one household each
        p.error(f"--households: at least {LOOKUPS}")
    rng = np.random.default_rng(args.seed)
    households, products = _draw(rng, args.households, args.products, args.per_household, args.tastes)

    drawing_peak_gib = _reset_peak_rss()
    started = time.perf_counter()
    sample = SampledPairs(max_work=args.max_work)
    start = 0
    while start < len(households):  # whole households a chunk, as a stats pass reads them
        end = min(start + CHUNK_PAIRS, len(households))
        end = end if end == len(households) else int(np.searchsorted(households, households[end]))
        sample.add(households[start:end], products[start:end], np.zeros(end - start, np.int64))
        start = end
    neighbours = ProductNeighbours.fit_rows(*sample.rows(), args.products)
    fit_s = time.perf_counter() - started
    row = {
        "benchmark": "neighbours_fit",
        "households": args.households,
        "products": args.products,
        "draws": args.households * args.per_household,
        "pairs": len(households),
        "k": NEIGHBOURS_K,
        "tastes": args.tastes,
        "max_work": args.max_work,
        "households_fitted": sample.households_kept,
        "pairs_fitted": int(sample.rows()[0][-1]),
        "fit_s": round(fit_s, 2),
        "fit_peak_rss_gib": _peak_rss_gib(),
    }
    if args.compare_full:
        started = time.perf_counter()
        full = ProductNeighbours.fit_rows(run_offsets(households), products, args.products)
        row["full_fit_s"] = round(time.perf_counter() - started, 2)
        buyers = np.bincount(products, minlength=args.products)
        row["neighbours_in_full_fit"] = _agreement(neighbours, full, buyers)
        if args.tastes:
            size = (args.products - 1) // args.tastes
            row["same_taste_sampled"] = _same_taste(neighbours, buyers, size)
            row["same_taste_full"] = _same_taste(full, buyers, size)

    started = time.perf_counter()
    starts = run_offsets(households)
    for i in range(LOOKUPS):
        own = products[starts[i] : starts[i + 1]]
        neighbours.best(own, 100)
        neighbours.scores(own, products[-300 - i : len(products) - i])
    row["lookup_ms"] = round((time.perf_counter() - started) / LOOKUPS * 1000, 3)
    row["kept"] = len(neighbours.indices)
    row["peak_rss_gib"] = max(drawing_peak_gib, _peak_rss_gib())
    print(json.dumps(row), flush=True)
    return row


def _draw(rng: np.random.Generator, households: int, products: int, per_household: int, tastes: int) -> tuple:
    """Distinct (household, product) pairs, sorted, as a stats pass collects them."""
    popularity = 1.0 / np.arange(1, products) ** 1.1
    cdf = np.cumsum(popularity / popularity.sum())
    draws = households * per_household
    drawn = 1 + np.minimum(np.searchsorted(cdf, rng.random(draws)), products - 2)
    if tastes:
        size = (products - 1) // tastes
        within = np.cumsum(popularity[:size] / popularity[:size].sum())
        own = rng.random(draws) < TASTE_SHARE
        taste = np.repeat(np.arange(households) % tastes, per_household)[own]
        drawn[own] = 1 + taste * size + np.minimum(np.searchsorted(within, rng.random(int(own.sum()))), size - 1)
    pairs = np.unique(np.repeat(np.arange(households, dtype=np.int64), per_household) * products + drawn)
    return pairs // products, pairs % products


def _agreement(sampled: ProductNeighbours, full: ProductNeighbours, buyers: np.ndarray) -> float:
    """Of the products bought by COMPARED_BUYERS households or more, the share of the full fit's
    neighbours that the sampled fit keeps too."""
    found = total = 0
    for product in np.flatnonzero(buyers >= COMPARED_BUYERS):
        mine = sampled.indices[sampled.indptr[product] : sampled.indptr[product + 1]]
        theirs = full.indices[full.indptr[product] : full.indptr[product + 1]]
        found += len(np.intersect1d(mine, theirs))
        total += len(theirs)
    return round(found / max(total, 1), 4)


def _same_taste(neighbours: ProductNeighbours, buyers: np.ndarray, size: int) -> float:
    """Of the neighbours of the products bought by COMPARED_BUYERS households or more, the share
    in the product's own taste set (products 1 + t * size ... (t + 1) * size)."""
    compared = np.flatnonzero(buyers >= COMPARED_BUYERS)
    lengths = neighbours.indptr[compared + 1] - neighbours.indptr[compared]
    rows = np.repeat(compared, lengths)
    near = np.concatenate([neighbours.indices[neighbours.indptr[p] : neighbours.indptr[p + 1]] for p in compared])
    return round(float(np.mean((rows - 1) // size == (near - 1) // size)), 4) if len(near) else 0.0


def _reset_peak_rss() -> float:
    """Resets the process's peak resident memory, so that the fit's own peak (with the pairs drawn
    before it) shows apart from the drawing's; returns the peak until then (GiB), which the
    reset erases from ru_maxrss as well as from VmHWM."""
    before = _peak_rss_gib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return before


def _peak_rss_gib() -> float:
    """VmHWM: the peak resident memory since the start or the last :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kib / 2**20, 2)


if __name__ == "__main__":
    main()
