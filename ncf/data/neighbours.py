"""Each product's nearest co-purchased products at a cutoff: the collaborative signal for products
new to a household.

Two products are near when the same households buy them: the cosine between their columns of
the binary household x product matrix of the purchases strictly before the cutoff (item-based
collaborative filtering, Sarwar et al., WWW 2001), each product keeping its ``k`` nearest (the
``implicit`` library's all-pairs k-NN, one row at a time: memory grows with ``products x k``,
never with the product pairs). A household's score for a product is the sum of its
similarities to the distinct products the household bought before the moment. Kept sparse
(``k`` a product), it fits a million products, where a dense item-item matrix such as EASE's
would need terabytes.

On the no-rebuy log of BENCHMARKS.md this score alone, ``k`` chosen on the validation weeks,
ranks new products about as well as EASE and ahead of tuned ALS; with ``k`` fixed it is a
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

from ncf.data.timeline import Aggregates, positions_in

NEIGHBOURS_K = 10  # neighbours kept per product
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
        """From (household, product) purchases (repeats count once); index 0 (unknown) has none."""
        keep = products > 0
        if not keep.any() or k < 1:
            return ProductNeighbours.empty(num_products)
        households, products = households[keep], products[keep]
        _, rows = np.unique(households, return_inverse=True)
        bought = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, products)), shape=(int(rows.max()) + 1, num_products)
        )
        bought.sum_duplicates()
        bought.data[:] = 1.0
        from implicit.nearest_neighbours import CosineRecommender  # its import starts thread pools

        # One thread: a stats pass is a Ray task that asks for one CPU.
        model = CosineRecommender(K=k + 1, num_threads=1)  # each product is its own nearest
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "expects CSR": it transposes internally
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
        order = np.argsort(neighbour, kind="stable")
        neighbour, cosine = neighbour[order], cosine[order]
        starts = np.flatnonzero(np.r_[True, neighbour[1:] != neighbour[:-1]])
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


def _distinct(products: np.ndarray) -> np.ndarray:
    """``products`` sorted and distinct (a household's aggregate keys already are: kept as given)."""
    products = np.asarray(products, np.int64)
    if len(products) > 1 and not bool(np.all(products[1:] > products[:-1])):
        return np.unique(products)
    return products


def _top_per_row(similarity: sp.csr_matrix, k: int) -> ProductNeighbours:
    """Each row's ``k`` largest entries (ties to the lower index). The library keeps ``k + 1`` a
    row, meant as the product itself and ``k`` others; when more than ``k + 1`` products tie
    (long-tail products bought by one household all share a cosine of 1), it may keep ``k + 1``
    others instead."""
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
