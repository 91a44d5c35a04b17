"""Each product's nearest co-purchased products at a cutoff: the collaborative signal for products
new to a household.

Two products are near when the same households buy them: the cosine between their columns of
the binary household x product matrix of the purchases strictly before the cutoff (item-based
collaborative filtering, Sarwar et al., WWW 2001), each product keeping its ``k`` nearest (the
``implicit`` library's all-pairs k-NN, one row at a time: memory grows with ``products x k``,
never with the product pairs), on the pairs :class:`SampledPairs` keeps: every household's
latest ``NEIGHBOURS_MAX_PRODUCTS`` products while the fit's work stays bounded, a sample of
households beyond. A household's score for a product is the sum of its similarities to the
distinct products the household bought before the moment. Kept sparse (``k`` a product), it
fits a million products, where a dense item-item matrix such as EASE's would need terabytes.

On the no-rebuy log of BENCHMARKS.md this score alone, ``k`` chosen on the validation weeks,
ranks new products about as well as EASE (ALS, tuned since on another draw of that log, is in
the same table); with ``k`` fixed it is a
first-stage source (:mod:`ncf.rank.candidates`, the training lists' neighbour candidates) and a
model input (:data:`ncf.data.features.NEIGHBOURS`), both through :meth:`ProductNeighbours.scores`.

Example::

    neighbours = ProductNeighbours.fit(households, products, num_products=500, k=10)
    neighbours.scores(np.array([3, 7]), np.array([5, 9, 11]))  # 3 sums of similarities
    neighbours.best(np.array([3, 7]), 20)  # the 20 products nearest to 3 and 7, not 3 or 7
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
import scipy.sparse as sp

from ncf.data.timeline import Aggregates, positions_in, run_offsets, run_starts, stable_order
from ncf.data.user_state import scrambled

NEIGHBOURS_K = 10  # neighbours kept per product
# The fit's work is the sum over households of their distinct products squared (each pair of a
# household's products meets once): 5e8 for Complete Journey, 1e11 and hours on one thread for
# 10M households of 100 products. So it reads each household's latest MAX_PRODUCTS products, and
# households in the order of their scrambled index until that work reaches MAX_WORK (about 2
# minutes on one thread here, bench.neighbours_fit): the co-purchase cosines of products that a
# million households buy need not read ten million.
NEIGHBOURS_MAX_PRODUCTS = 2_500
NEIGHBOURS_MAX_WORK = 2 * 10**10
_SHRINK_AT = 1.5  # the households kept are cut back to MAX_WORK when they pass it by half
FILE = "neighbours.npz"
_DERIVED = "neighbour_sums"  # the key of a household's sums in Aggregates.derived


@dataclass(frozen=True)
class ProductNeighbours:
    """CSR rows, one per product index: its ``k`` nearest products and their cosines (> 0)."""

    indptr: np.ndarray  # P + 1, int64
    indices: np.ndarray  # int32
    weights: np.ndarray  # float32

    @property
    def num_products(self) -> int:
        return len(self.indptr) - 1

    @staticmethod
    def empty(num_products: int) -> "ProductNeighbours":
        return ProductNeighbours(np.zeros(num_products + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    @staticmethod
    def fit(
        households: np.ndarray, products: np.ndarray, num_products: int, k: int = NEIGHBOURS_K
    ) -> "ProductNeighbours":
        """From (household, product) purchases in any order (repeats count once); index 0
        (unknown) has none."""
        households, products = np.asarray(households, np.int64), np.asarray(products, np.int64)
        order = np.lexsort((products, households))
        households, products = households[order], products[order]
        distinct = np.r_[True, (households[1:] != households[:-1]) | (products[1:] != products[:-1])]
        households, products = households[distinct], products[distinct]
        known = products > 0
        households, products = households[known], products[known]
        return ProductNeighbours.fit_rows(run_offsets(households), products, num_products, k)

    @staticmethod
    def fit_rows(
        indptr: np.ndarray, products: np.ndarray, num_products: int, k: int = NEIGHBOURS_K
    ) -> "ProductNeighbours":
        """From each household's distinct known products: ``products[indptr[h]:indptr[h + 1]]``,
        increasing within a household, none 0 (what a products' stats pass collects, so that the
        pairs, a billion at 10M households, are neither sorted again nor held as pairs of int64)."""
        if not len(products) or k < 1:
            return ProductNeighbours.empty(num_products)
        bought = sp.csr_matrix(
            (np.ones(len(products), np.float32), np.asarray(products, np.int32), np.asarray(indptr, np.int64)),
            shape=(len(indptr) - 1, num_products),
        )
        from implicit.nearest_neighbours import CosineRecommender  # its import starts thread pools

        # One thread: a stats pass is a Ray task that asks for one CPU.
        model = CosineRecommender(K=k + 1, num_threads=1)  # each product is its own nearest
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Method expects CSR")  # it transposes internally
            model.fit(bought, show_progress=False)
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.setdiag(0.0)
        similarity.eliminate_zeros()
        return _top_per_row(similarity, k)

    def _gathered(self, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(neighbour, cosine) of every product in ``own`` (sorted, distinct), concatenated."""
        starts, ends = self.indptr[own], self.indptr[own + 1]
        lengths = ends - starts
        if not lengths.sum():
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        positions = np.repeat(ends - np.cumsum(lengths), lengths) + np.arange(int(lengths.sum()))
        return self.indices[positions].astype(np.int64), self.weights[positions]

    def _sums(self, own: Union[np.ndarray, Aggregates]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the distinct products of ``own``, the distinct products near them (sorted), each one's
        summed cosine). Given a household's :class:`Aggregates`, kept on them: the first stage's
        :meth:`best` and the features' :meth:`scores` of one household ask in turn."""
        if not isinstance(own, Aggregates):
            return self._summed(_distinct(own))
        kept = own.derived.get(_DERIVED)
        if kept is None or kept[0] is not self:
            kept = (self, self._summed(own.keys))
            own.derived[_DERIVED] = kept
        return kept[1]

    def _summed(self, own: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        neighbour, cosine = self._gathered(own)
        if not len(neighbour):
            return own, neighbour, np.zeros(0)
        order = stable_order(neighbour)
        neighbour, cosine = neighbour[order], cosine[order]
        starts = run_starts(neighbour)
        return own, neighbour[starts], np.add.reduceat(cosine.astype(np.float64), starts)

    def scores(self, own: Union[np.ndarray, Aggregates], candidates: np.ndarray) -> np.ndarray:
        """C float32 sums of each candidate's cosines to the distinct products of ``own`` (product
        indices, or a household's :class:`Aggregates`: its keys)."""
        _, near, summed = self._sums(own)
        if not len(near):
            return np.zeros(len(candidates), np.float32)
        at = positions_in(near, np.asarray(candidates, np.int64))
        return np.where(at >= 0, summed[at], 0.0).astype(np.float32)

    def best(self, own: Union[np.ndarray, Aggregates], n: int) -> np.ndarray:
        """The ``n`` products (at most) with the highest :meth:`scores`, none of ``own``, best first
        (ties by index)."""
        distinct_own, near, summed = self._sums(own)
        fresh = positions_in(distinct_own, near) < 0
        near, summed = near[fresh], summed[fresh]
        if len(near) > n:  # only the n best need sorting; ties at the cut keep the lower index
            cut = np.partition(-summed, n - 1)[n - 1] if n > 0 else np.inf
            keep = -summed <= cut
            near, summed = near[keep], summed[keep]
        return near[np.lexsort((near, -summed))[:n]]

    def save(self, directory: str) -> None:
        np.savez(os.path.join(directory, FILE), indptr=self.indptr, indices=self.indices, weights=self.weights)

    @staticmethod
    def load(directory: str, num_products: int) -> "ProductNeighbours":
        """From ``directory`` (arrays only, no pickle); checked against the catalog's size and
        for well-formed rows, since every ranking request indexes with them."""
        path = os.path.join(directory, FILE)
        with np.load(path, allow_pickle=False) as f:
            loaded = ProductNeighbours(f["indptr"], f["indices"], f["weights"])
        if loaded.num_products != num_products:
            raise ValueError(f"{path}: neighbours of {loaded.num_products} products, not {num_products}")
        indptr, indices, weights = loaded.indptr, loaded.indices, loaded.weights
        well_formed = (
            indptr.dtype.kind == "i"
            and indices.dtype.kind == "i"
            and weights.dtype.kind == "f"
            and indptr[0] == 0
            and indptr[-1] == len(indices) == len(weights)
            and bool(np.all(np.diff(indptr) >= 0))
            and (not len(indices) or (indices.min() >= 0 and indices.max() < num_products))
        )
        if not well_formed:
            raise ValueError(f"{path}: malformed rows (row pointers, product indices or weights)")
        return loaded


class SampledPairs:
    """The (household, product) pairs the neighbours' fit reads, collected a chunk of households
    at a time: each household's ``max_products`` latest products, and the households with the
    lowest scrambled indices (:func:`ncf.data.user_state.scrambled`) whose summed work (their
    products squared) stays within ``max_work``: every household while the total does. What is
    kept is the same whatever the chunks, and memory holds about ``max_work`` worth of pairs.

    Example::

        sample = SampledPairs()
        sample.add(households, products, last_days)  # pairs sorted by household, chunk by chunk
        indptr, products = sample.rows()  # ProductNeighbours.fit_rows(indptr, products, P)
    """

    def __init__(self, max_products: int = NEIGHBOURS_MAX_PRODUCTS, max_work: float = NEIGHBOURS_MAX_WORK) -> None:
        if max_products < 1:
            raise ValueError("max_products must be >= 1")
        self.max_products, self.max_work = max_products, max_work
        self.households_seen = 0
        self._keys, self._counts, self._products = [], [], []  # per chunk: per household, per pair
        self._work = 0
        self._key_limit = None  # households at or above it can no longer be kept

    def add(self, households: np.ndarray, products: np.ndarray, last_days: np.ndarray) -> None:
        """Pairs of whole households, sorted by household (its products distinct, increasing)."""
        offsets = run_offsets(households)
        counts = np.diff(offsets)
        keys = scrambled(households[offsets[:-1]])
        if len(counts) and counts.max() > self.max_products:  # every household keeps some products
            products = products[self._latest(households, products, last_days, offsets)]
            counts = np.minimum(counts, self.max_products)
        self.households_seen += len(counts)
        if self._key_limit is not None:
            below = keys < self._key_limit
            products, keys, counts = products[np.repeat(below, counts)], keys[below], counts[below]
        self._keys.append(keys)
        self._counts.append(counts)
        self._products.append(products.astype(np.int32))
        self._work += int(np.dot(counts, counts))
        if self._work > _SHRINK_AT * self.max_work:
            self._shrink()

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr H + 1, products) of the households kept, for :meth:`ProductNeighbours.fit_rows`."""
        if self._work > self.max_work:
            self._shrink()
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        products = np.concatenate(self._products) if self._products else np.zeros(0, np.int32)
        return np.r_[0, np.cumsum(counts)].astype(np.int64), products

    @property
    def households_kept(self) -> int:
        return int(sum(len(counts) for counts in self._counts))

    def _shrink(self) -> None:
        """Keeps the households of the lowest keys whose work adds up to ``max_work`` at most."""
        keys, counts, products = (np.concatenate(parts) for parts in (self._keys, self._counts, self._products))
        order = np.argsort(keys)
        within = order[np.cumsum(counts[order] ** 2) <= self.max_work]
        keep = np.zeros(len(keys), bool)
        keep[within] = True
        if len(within) < len(order):  # the first household cut: more households below it only add work
            self._key_limit = int(keys[order[len(within)]])
        self._keys, self._counts, self._products = [keys[keep]], [counts[keep]], [products[np.repeat(keep, counts)]]
        self._work = int(np.dot(counts[keep], counts[keep]))

    def _latest(
        self, households: np.ndarray, products: np.ndarray, last_days: np.ndarray, offsets: np.ndarray
    ) -> np.ndarray:
        """A mask: each household's ``max_products`` products bought last (ties to the higher
        index); ``offsets``: the households' :func:`run_offsets`."""
        order = np.lexsort((-products, -last_days, households))
        first = np.repeat(offsets[:-1], np.diff(offsets))
        keep = np.zeros(len(households), bool)
        keep[order[np.arange(len(order)) - first < self.max_products]] = True
        return keep


def _distinct(products: np.ndarray) -> np.ndarray:
    """``products`` sorted and distinct (a household's aggregate keys already are: kept as given)."""
    products = np.asarray(products, np.int64)
    if len(products) > 1 and not bool(np.all(products[1:] > products[:-1])):
        return np.unique(products)
    return products


def _top_per_row(similarity: sp.csr_matrix, k: int) -> ProductNeighbours:
    """Each row's ``k`` largest entries, ties to the lower index among what the library kept. The
    library keeps ``k + 1`` a row, meant as the product itself and ``k`` others, and among tied
    cosines it keeps the higher indices: where more products tie than fit (long-tail products
    bought by one household all share a cosine of 1; on Complete Journey most full rows tie at
    their last place), the higher-index ones stay, the same at every cutoff, in training as in
    ranking."""
    similarity.sort_indices()
    lengths = np.diff(similarity.indptr)
    row = np.repeat(np.arange(similarity.shape[0]), lengths)
    order = np.lexsort((similarity.indices, -similarity.data, row))
    rank = np.arange(len(order)) - similarity.indptr[row[order]]
    keep = np.sort(order[rank < k])  # still by row, then by index
    counts = np.bincount(row[keep], minlength=similarity.shape[0])
    return ProductNeighbours(
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        similarity.indices[keep].astype(np.int32),
        similarity.data[keep].astype(np.float32),
    )
