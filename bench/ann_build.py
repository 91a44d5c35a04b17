"""How deep should the MF index's graph be built? Build time against recall, on a model's vectors.

python -m bench.ann_build --model M [--build-depths 100,50,32] [--search-depths 150]
    [--queries 500] [--width 150]

The first stage asks the MF products' HNSW index (:mod:`ncf.model.ann`) for each household's
``width`` best products by the MF path. This builds the index of model directory M's product
vectors once per ``efConstruction`` (``--build-depths``; M and efSearch as the code has them),
then searches it at each ``efSearch`` of ``--search-depths`` (at least ``width``, as the code
searches) for ``--queries`` households drawn at random (seed 0) and compares what it finds with
the exact top ``width`` by inner product (the products row 0 excluded, as the first stage
excludes the unknown row). One JSON line per (build depth, search depth): build seconds,
recall@width against exact, and the search's milliseconds per household on one thread (the
fastest of three passes over the queries; the nightly actors and a replica search on one core).
``search`` says what answered: ``HNSW`` (the graph), or ``exact`` where the catalog is so small
that :meth:`ncf.model.ann.ProductIndex.search` ranks its rows exactly instead
(:func:`ncf.model.ann.searches_exactly`); the depths then change nothing but the build.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

from ncf.model import ann
from ncf.model.files import WEIGHTS

_USER_TABLE = "mf_embedding_collection.embedding_bags.user_mf_embeddings.weight"


def exact_top(queries: np.ndarray, products: np.ndarray, width: int, chunk: int = 50) -> np.ndarray:
    """Q x width product rows of largest inner product with each query (row 0 never), unordered."""
    found = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ products.T
        scores[:, 0] = -np.inf
        found.append(np.argpartition(-scores, width, axis=1)[:, :width])
    return np.vstack(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` that the same row of ``found`` holds."""
    return float(np.mean([len(np.intersect1d(f, e)) / e.shape[0] for f, e in zip(found, exact)]))


def search_ms(index: ann.ProductIndex, asked: np.ndarray, width: int, allowed: np.ndarray, depth: int, passes: int = 3):
    """(rows found at efSearch ``depth``, milliseconds per query on one thread: the fastest of ``passes``)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        best = np.inf
        for _ in range(passes):
            started = time.perf_counter()
            found = index.search(asked, width, allowed, depth)
            best = min(best, time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return found, 1000 * best / len(asked)


def run(
    model: str,
    depths: List[int],
    queries: int = 500,
    width: int = ann.MF_CANDIDATES,
    search_depths: Sequence[int] = (ann.SEARCH_DEPTH,),
) -> List[Dict]:
    weights = torch.load(os.path.join(model, WEIGHTS), weights_only=True, map_location="cpu")
    products = ann.product_vectors(weights)
    users = weights[_USER_TABLE].float().numpy()
    width = min(width, len(products) - 2)
    picked = np.random.default_rng(0).choice(np.arange(1, len(users)), size=min(queries, len(users) - 1), replace=False)
    asked = np.ascontiguousarray(users[np.sort(picked)])
    exact = exact_top(asked, products, width)
    allowed = np.ones(len(products), bool)
    allowed[0] = False
    search_kind = "exact" if ann.searches_exactly(int(allowed.sum()), len(products)) else "HNSW"
    warm_up(products, depths[0])
    rows = []
    for depth in depths:
        started = time.perf_counter()
        index = ann.ProductIndex.build(weights, depth)
        seconds = time.perf_counter() - started
        for search in search_depths:
            found, ms = search_ms(index, asked, width, allowed, search)
            row = {
                "benchmark": "ann_build",
                "model": os.path.abspath(model),
                "products": len(products) - 1,
                "M": ann.NEIGHBOURS,
                "efConstruction": depth,
                "efSearch": max(search, width),
                "search": search_kind,
                "width": width,
                "queries": len(asked),
                "build_seconds": round(seconds, 1),
                f"recall@{width}": round(recall(found, exact), 4),
                "search_ms_per_query": round(ms, 5),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def warm_up(products: np.ndarray, depth: int, rows: int = 2_000) -> None:
    """An untimed build of a few products' index: FAISS's import and its OpenMP threads' start
    would otherwise be timed in the first depth's build (0.2-0.5 s of Complete Journey's 2-3 s)."""
    import faiss

    warm = faiss.IndexHNSWFlat(products.shape[1], ann.NEIGHBOURS, faiss.METRIC_L2)
    warm.hnsw.efConstruction = depth
    warm.add(np.ascontiguousarray(products[:rows], dtype=np.float32))


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory with an MF path")
    p.add_argument("--build-depths", default="100,50,32", help="efConstruction values, comma-separated")
    p.add_argument("--search-depths", default=str(ann.SEARCH_DEPTH), help="efSearch values, comma-separated")
    p.add_argument("--queries", type=int, default=500, help="households searched")
    p.add_argument("--width", type=int, default=ann.MF_CANDIDATES, help="products asked for each")
    args = p.parse_args(argv)
    depths = [int(d) for d in args.build_depths.split(",")]
    searches = [int(d) for d in args.search_depths.split(",")]
    return run(args.model, depths, args.queries, args.width, searches)


if __name__ == "__main__":
    main()
