"""The MF path's products as an approximate nearest-neighbour index (FAISS HNSW).

The MF logit of (household u, product p) is ``mf_output(u * p)``: with ``mf_output``'s weights
folded into the product vectors it is the inner product ``u . p'``, so a household's best
products by the MF path are those of largest inner product with it (with the sign of ``final``'s
weight on the MF logit folded in too: the best by the score the MF path adds, not the worst).
HNSW is built for distances, and over inner products of vectors of unequal norms its graph finds
them poorly (on Complete Journey's trained vectors: 0.69 of the exact top 150); so each ``p'``
gets one more coordinate,
``sqrt(M^2 - |p'|^2)`` (M the largest norm), and the query a 0 there: the nearest neighbours in
L2 are then exactly the largest inner products (Bachrach et al., RecSys 2014), and the graph
finds most of them at the default search depth (0.93-1.00 on Complete Journey, 0.75-0.78 on the
larger benchmark catalogs: the constants below, BENCHMARKS.md). The index holds one vector
per row of the product table (its ids are the rows) and is written into the model directory
when the model is saved (``MODEL/mf_index.faiss``), so that a replica or a scoring actor loads it
instead of building it: at a million products the build takes minutes, a load seconds.

Only states whose households' exact lists would not fit the first stage's cache, or would take
too long to compute, need it (:func:`needed`); ranking restricts each search to the products its state knows (an ID
selector), so one index serves every state the model ranks from.

Example::

    index = ProductIndex.build(model.state_dict())  # or ProductIndex.load(path)
    rows = index.search(user_vectors, 150, allowed)  # U x 150 product-table rows, best first
"""

from __future__ import annotations

import os
import struct
from typing import Dict, Optional, Union

import numpy as np
import torch

from ncf.jsonio import write_atomically

INDEX_FILE = "mf_index.faiss"
# The first stage keeps every household's exact list while the table of them fits this many
# entries (200 MB of int32: 333k households at 150 each); beyond it, it searches this index.
MF_CACHE_MAX_ENTRIES = 50_000_000
# ... and while computing all of them is at most this many dot products: about 45 s of a replica's
# start here (64 households x 1M products took 0.17 s), so that every kept list is computed before
# the first request (ncf.rank.ranker.WARM_MAX_SCORES). Beyond it, each household's exact list would
# cost a request a scan of the catalog (about 3 ms at 1M products; a search 0.3 ms at 100k): 333k
# households x 1M products were kept, a quarter hour of scans per replica, until 2026-12-05.
MF_EXACT_MAX_SCORES = 1 << 34
MF_CANDIDATES = 150  # the first stage's default list width (RankingSettings.mf_candidates)
# HNSW's M, efConstruction and efSearch. A search as deep as the list it returns (150) finds
# 0.93-1.00 of the exact MF top 150 on three Complete Journey seeds' trained vectors, 0.78 on
# bench.scale's ALS-fitted 100k products and 0.75 on the barely trained 1M-product tables of the
# 10M run; a graph built twice as deep (efConstruction 100, the default until 2026-12-03) found
# less in all five (0.83-0.99, 0.74, 0.42) and took up to 2.2x as long to build (1.85x at 1M), for
# a search up to 1.8x faster (`python -m bench.ann_build`; BENCHMARKS.md "The MF index's build depth").
NEIGHBOURS, BUILD_DEPTH, SEARCH_DEPTH = 32, 50, 150
HNSW_FLAT = b"IHNf"  # FAISS's header of an IndexHNSWFlat, what build() makes
FLAT_STORAGE = b"IxF2"  # ...and of its storage, an IndexFlatL2
# A state that allows few of the index's rows (a DATA knowing few of its products, a model whose
# lists held few) is ranked exactly: up to EXACT_SEARCH_ROWS allowed rows, or while allowed^2 <=
# EXACT_COST_RATIO x rows. A filtered graph search's cost grows as efSearch, which must grow as the
# allowed share shrinks; an exact one's as the allowed rows. A helper's timing on this machine
# (32 households, 200k rows): the graph 5.9 ms with every row allowed, 11 ms at 100k, 44 ms at
# 25k (efSearch 1,200); exact 9.9 ms at 20k, 22 ms at 40k of 1M. Their crossing: allowed^2 about
# 10,000 x rows.
EXACT_SEARCH_ROWS, EXACT_COST_RATIO, MAX_SEARCH_DEPTH = 20_000, 10_000, 2_048

_PRODUCT_TABLE = "mf_embedding_collection.embedding_bags.product_mf_embeddings.weight"
_MF_OUTPUT = "mf_output.weight"
_FINAL = "final.0.weight"  # Linear(2, 1) over (MF logit, MLP logit)


# FAISS's writing of an IndexHNSW (index_write.cpp, 1.15): the index header (fourcc, d, ntotal,
# two dummies, is_trained, metric_type, and metric_arg past METRIC_L2), then the graph's arrays
# (assign_probas doubles, cum_nneighbor_per_level, levels, offsets, neighbors: each a size_t
# count and its items), five ints (entry_point, max_level, efConstruction, efSearch,
# upper_beam), then the storage, an index of its own, header first.
_INDEX_HEADER = struct.Struct("<4siqqq?i")
_GRAPH_ITEM_BYTES = (8, 4, 4, 8, 4)
_GRAPH_TAIL_BYTES = 20


def _hnsw_storage_kind(path: str) -> bytes:
    """The FAISS header of the storage inside the HNSW index file at ``path`` (ValueError for a
    file cut short), read without FAISS: its reader opens what a nested index names."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:

        def take(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise ValueError(f"{path}: an HNSW index file cut short")
            return data

        metric = _INDEX_HEADER.unpack(take(_INDEX_HEADER.size))[-1]
        if metric > 1:  # a metric argument follows
            take(4)
        for item_bytes in _GRAPH_ITEM_BYTES:
            (count,) = struct.unpack("<Q", take(8))
            if count * item_bytes > size - f.tell():
                raise ValueError(f"{path}: an HNSW index file cut short")
            f.seek(count * item_bytes, os.SEEK_CUR)
        take(_GRAPH_TAIL_BYTES)
        return take(4)


def needed(households: int, width: int, products: int) -> bool:
    """Whether a first stage over ``households`` lists of ``width`` products, from a catalog of
    ``products``, searches the index: its exact lists would not fit the cache, or would cost too
    many scans of the catalog."""
    if width <= 0:  # a first stage of no MF candidates (config.json's ranking) searches nothing
        return False
    return lists_too_large(households, width) or households * products > MF_EXACT_MAX_SCORES


def searches_exactly(allowed: int, rows: int) -> bool:
    """Whether :meth:`ProductIndex.search` ranks ``allowed`` of an index's ``rows`` exactly from
    their stored vectors rather than searching the graph (:data:`EXACT_SEARCH_ROWS`,
    :data:`EXACT_COST_RATIO`)."""
    return allowed <= EXACT_SEARCH_ROWS or allowed**2 <= EXACT_COST_RATIO * rows


def lists_too_large(households: int, width: int) -> bool:
    """Whether ``households`` exact lists of ``width`` products would not fit the first stage's
    cache (the rule alone until 2026-12-05, by which older models were saved with an index)."""
    return households * width > MF_CACHE_MAX_ENTRIES


def product_vectors(weights: Dict[str, torch.Tensor], rows: Optional[np.ndarray] = None) -> np.ndarray:
    """P x D float32: each product-table row (or only ``rows``) times ``mf_output``'s weights
    (from a state dict), negated where ``final`` weighs the MF logit negatively: a household's
    largest inner products are then the products the MF path scores highest in the final score."""
    table = weights[_PRODUCT_TABLE].detach()
    if rows is not None:
        table = table[torch.as_tensor(rows, dtype=torch.int64)]
    folded = table.float().cpu() * weights[_MF_OUTPUT].detach().float().cpu()[0]
    if _FINAL in weights and float(weights[_FINAL].detach().reshape(-1)[0]) < 0:
        folded = -folded
    return np.ascontiguousarray(folded.numpy(), dtype=np.float32)


def has_mf(weights: Dict[str, torch.Tensor]) -> bool:
    return _PRODUCT_TABLE in weights and _MF_OUTPUT in weights


class AllowedRows:
    """A boolean mask over an index's rows, prepared once for many searches: the rows it allows
    and the bitmap FAISS's ID selector reads. The first stage searches with the same mask at
    every chunk of households; at 1M rows, preparing it took 0.6 ms a search.

    Args:
        mask: R booleans, one per row of the product table (R the index's ``rows``).
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        self.size = len(mask)
        self.rows = np.flatnonzero(mask)  # A allowed rows, ascending
        # Kept with the object: FAISS's selector holds only a pointer to it.
        self.bitmap = np.packbits(mask.astype(np.uint8), bitorder="little")


class ProductIndex:
    """An HNSW index over every product-table row's folded MF vector; ids are the rows."""

    def __init__(self, index) -> None:
        self.index = index

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """The MF width (the index's vectors carry one more coordinate)."""
        return int(self.index.d) - 1

    @staticmethod
    def build(weights: Dict[str, torch.Tensor], depth: int = BUILD_DEPTH) -> "ProductIndex":
        """The index of ``weights``' MF products, built at efConstruction ``depth``."""
        import faiss

        vectors = product_vectors(weights)
        norms = np.linalg.norm(vectors, axis=1)
        lift = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0))[:, None]
        index = faiss.IndexHNSWFlat(vectors.shape[1] + 1, NEIGHBOURS, faiss.METRIC_L2)
        index.hnsw.efConstruction = depth
        index.add(np.hstack([vectors, lift]).astype(np.float32))
        return ProductIndex(index)

    @staticmethod
    def load(path: str) -> "ProductIndex":
        """Reads an index file (FAISS's own binary format: no pickle, nothing executed; FAISS's
        reader is not hardened against crafted files, so only a model directory's own index,
        whose checksum :func:`ncf.model.integrity.verify_model_dir` checks, is read). Only what
        :meth:`build` writes is taken: an HNSW index of L2 distance over flat storage. Another kind
        (an IVF whose lists FAISS reads from a file it names, outside the directory and its seal)
        raises ValueError, its headers read before FAISS reads any of it, the nested storage's too
        (an HNSW header over an IVF's lists made FAISS open the file they name, read-write)."""
        import faiss

        with open(path, "rb") as f:
            kind = f.read(4)
        if kind != HNSW_FLAT:
            raise ValueError(f"{path}: not an HNSW index of flat vectors (FAISS header {kind!r}, not {HNSW_FLAT!r})")
        storage_kind = _hnsw_storage_kind(path)
        if storage_kind != FLAT_STORAGE:
            raise ValueError(f"{path}: an HNSW index over storage {storage_kind!r}, not flat vectors {FLAT_STORAGE!r}")
        index = faiss.read_index(path)  # of its own class already; downcast_index's proxy would not own it
        storage = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSWFlat) else None
        if not isinstance(storage, faiss.IndexFlat) or index.metric_type != faiss.METRIC_L2:
            raise ValueError(f"{path}: not an HNSW index of L2 distance over flat vectors, as this code writes")
        return ProductIndex(index)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """len(rows) x D: the MF vectors stored for ``rows`` (without the coordinate added for L2)."""
        return (
            np.stack([self.index.reconstruct(int(row))[: self.dim] for row in rows])
            if len(rows)
            else np.zeros((0, self.dim), np.float32)
        )

    def save(self, path: str) -> None:
        import faiss

        # Written from Python, flushed and renamed (write_atomically): faiss.write_index turns a full
        # disk into a RuntimeError, or, on its last buffer, into a truncated file and a line on
        # stderr (its writer's destructor cannot raise). The bytes are held once more meanwhile.
        data = faiss.serialize_index(self.index)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(memoryview(data))

        write_atomically(path, write)

    def search(
        self, vectors: np.ndarray, width: int, allowed: Union[np.ndarray, AllowedRows], depth: int = SEARCH_DEPTH
    ) -> np.ndarray:
        """U x width rows, best first, among the rows where ``allowed`` (a boolean mask over the
        table's rows, or one prepared as :class:`AllowedRows` for many searches) is true; -1
        where fewer than ``width`` rows are allowed.

        A filtered graph search visits about efSearch nodes and keeps the allowed ones, so a
        small allowed share came back mostly -1 (200 of 20,000 rows at width 150: 81% of the
        slots). Few allowed rows (:data:`EXACT_SEARCH_ROWS`, :data:`EXACT_COST_RATIO`) are ranked
        exactly from their stored vectors; more are searched with efSearch (``depth``, or
        ``width`` if more) grown with the rows' share left out, up to :data:`MAX_SEARCH_DEPTH`."""
        import faiss

        prepared = allowed if isinstance(allowed, AllowedRows) else AllowedRows(allowed)
        if prepared.size != self.rows:  # FAISS would read past the bitmap for the rows it lacks
            raise ValueError(f"the allowed mask covers {prepared.size} rows, the index {self.rows}")
        if width <= 0:  # FAISS asserts k > 0 (ranking.mf_candidates 0: no MF candidates)
            return np.full((len(vectors), 0), -1, dtype=np.int64)
        permitted = prepared.rows
        if searches_exactly(len(permitted), self.rows):
            return self._exact(vectors, width, permitted)
        share = len(permitted) / max(self.rows, 1)
        selector = faiss.IDSelectorBitmap(len(prepared.bitmap), faiss.swig_ptr(prepared.bitmap))  # n: bytes
        effort = min(max(depth, width) / share, MAX_SEARCH_DEPTH)
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(max(depth, width, effort)))
        queries = np.hstack([vectors, np.zeros((len(vectors), 1))]).astype(np.float32)
        _, found = self.index.search(queries, width, params=params)
        return found

    def _exact(self, vectors: np.ndarray, width: int, permitted: np.ndarray) -> np.ndarray:
        """U x width: the best of ``permitted`` rows by inner product (what the index's lifted L2
        distance orders by), -1 past their count."""
        found = np.full((len(vectors), width), -1, dtype=np.int64)
        if len(permitted) == 0 or len(vectors) == 0:
            return found
        stored = self.index.reconstruct_batch(permitted.astype(np.int64))[:, : self.dim]
        scores = np.asarray(vectors, dtype=np.float32) @ stored.T  # U x A
        take = min(width, len(permitted))
        best = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        found[:, :take] = permitted[np.take_along_axis(best, order, axis=1)]
        return found


def index_path(model_dir: str) -> str:
    return os.path.join(model_dir, INDEX_FILE)


def load_if_present(model_dir: str) -> Optional[ProductIndex]:
    path = index_path(model_dir)
    return ProductIndex.load(path) if os.path.exists(path) else None
