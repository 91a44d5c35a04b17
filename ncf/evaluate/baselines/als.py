"""``als``: implicit-feedback matrix factorisation (``implicit``'s ALS on BM25 weights), fitted
on the purchases before the period starts of every household that made one (at most
:data:`MAX_FIT_HOUSEHOLDS` of them: past that a seeded sample fits the products' factors and
every other household's factor is solved from its own purchases when it is ranked, the
half-step ALS itself would take). A household without purchases before the period has no
factor: every product scores 0 and popularity orders them.

The weighting of the purchase counts (:data:`WEIGHTINGS`): ``bm25`` as implicit's examples
weigh their items x users matrix, each product a document and each household a term (a
household's idf: one that buys from everywhere says less about a product); ``bm25_product_idf``
the other way round, each household a document and each product a term (a staple many
households buy weighs less: what grocery repeats are made of); ``counts`` unweighted. The
documents are those with purchases before the period (:func:`bm25_weight`)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ncf.evaluate.baselines.base import PointInTime, households_matrix, log

WEIGHTINGS = ("bm25", "bm25_product_idf", "counts")

# Households whose factors the fit holds: 1M x 512 factors is 2 GB (10M households held 10M x 512
# floats twice while fitting, about 41 GB). Complete Journey's 2,500 are all fitted.
MAX_FIT_HOUSEHOLDS = 1_000_000


def bm25_weight(counts: sp.csr_matrix, k1: float = 100.0, b: float = 0.8) -> sp.coo_matrix:
    """``implicit.nearest_neighbours.bm25_weight`` of ``counts`` (rows the documents, columns the
    terms) over the documents that hold a purchase: implicit's counts every row in N and in the
    average length, and the rows of a vocabulary are also the households (or products) first
    seen after the period starts, so the weights moved with the future. The idf is floored at 0:
    a term in all N documents would weigh log(N / (N + 1)) < 0, which ALS reads as a dislike.

    Example::

        bm25_weight(sp.csr_matrix([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), k1=1.0, b=0.0)
        # N = 3 documents, not 4 rows: idf log 3 - log 2 and log 3 - log 3 = 0; a weight is
        # count (k1 + 1) / (k1 + count) idf: [[0.541, 0], [0, 0], [0, 0], [0, 0]]
    """
    weighted = sp.coo_matrix(counts, dtype=np.float64)
    lengths = np.ravel(weighted.sum(axis=1))
    documents = np.bincount(weighted.row, minlength=weighted.shape[0]) > 0
    if not documents.any():
        return weighted
    frequency = np.bincount(weighted.col, minlength=weighted.shape[1])
    idf = np.maximum(np.log(documents.sum()) - np.log1p(frequency), 0.0)
    length_norm = (1.0 - b) + b * lengths / lengths[documents].mean()
    weighted.data = weighted.data * (k1 + 1.0) / (k1 * length_norm[weighted.row] + weighted.data) * idf[weighted.col]
    return weighted


def weighted_counts(counts: sp.csr_matrix, weighting: str) -> sp.csr_matrix:
    """Households x products counts weighted as ``weighting`` says (see the module docstring)."""
    if weighting == "bm25":
        weighted = bm25_weight(counts.T).T
    elif weighting == "bm25_product_idf":
        weighted = bm25_weight(counts)
    elif weighting == "counts":
        weighted = counts.copy()  # the memoised counts stay the other grid points' own
    else:
        raise ValueError(f"als: weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    return sp.csr_matrix(weighted, dtype=np.float32)


class ALSRanker:
    name = "als"

    def __init__(
        self,
        context: PointInTime,
        factors: int = 128,
        iterations: int = 15,
        regularization: float = 100.0,
        weighting: str = "bm25_product_idf",
        seed: int = 0,
    ) -> None:
        from implicit.als import AlternatingLeastSquares

        self.context = context
        self.params: Dict = {
            "factors": factors,
            "iterations": iterations,
            "regularization": regularization,
            "weighting": weighting,
        }
        # One row per household with purchases before the period (row r is household
        # households[r]): the vocabulary's other rows, households first seen later among them,
        # neither weigh nor fit.
        self._households = context.households()
        # Memoised: each point of the tuning grid fits on the same counts (a pass over every purchase).
        counts = context.memoised(("als_counts", context.start), lambda: purchase_counts(context)[self._households])
        self._weighted = weighted_counts(counts, weighting)
        fitted = fitted_households(self._weighted, MAX_FIT_HOUSEHOLDS, seed)
        # implicit parallelises itself; a second BLAS thread pool underneath only contends. The
        # constructor is inside the limit too: it checks the BLAS threads (and warns) there.
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=factors, regularization=regularization, iterations=iterations, random_state=seed, num_threads=2
            )
            self.model.fit(self._weighted if fitted is None else self._weighted[fitted], show_progress=False)
        self._users = np.asarray(self.model.user_factors)
        self._items = np.asarray(self.model.item_factors)
        self._fit_row = None  # each row's in the fit (-1: left out), where a sample fits
        if fitted is not None:
            self._fit_row = np.full(self._weighted.shape[0], -1, np.int64)
            self._fit_row[fitted] = np.arange(len(fitted))

    def row(self, user: int) -> int:
        """The household's row of the weighted counts, -1 without purchases before the period."""
        row = int(np.searchsorted(self._households, user))
        return row if row < len(self._households) and self._households[row] == user else -1

    def user_factor(self, user: int) -> np.ndarray:
        """The household's factor (F): the fit's, or for a household left out of it, the least-squares
        solution of its weighted purchases against the products' factors; zeros for one without
        purchases before the period."""
        row = self.row(user)
        if row < 0:
            return np.zeros(self._items.shape[1], self._items.dtype)
        if self._fit_row is None:
            return self._users[row]
        if self._fit_row[row] >= 0:
            return self._users[self._fit_row[row]]
        with threadpool_limits(1, "blas"):
            return self.model.recalculate_user(row, self._weighted[row])

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        self.context.check(at)
        # Every product's, as ranked: a product's dot product may differ in its last bit when
        # computed among fewer rows, and the sampled protocol counts ties.
        return self.context.masked(self._items @ self.user_factor(user))[products]

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        self.context.check(at)
        return self.context.rank(self._items @ self.user_factor(user), depth)


def fitted_households(weighted: sp.csr_matrix, most: int, seed: int):
    """The rows of ``weighted`` (one a household with purchases) to fit, sorted: None (all of
    them) where there are at most ``most``, else a ``seed``-ed sample of ``most``."""
    households = weighted.shape[0]
    if households <= most:
        return None
    log(
        f"als: fitting {most:,} of {households:,} households (MAX_FIT_HOUSEHOLDS); the rest are solved "
        "from their purchases when ranked"
    )
    return np.sort(np.random.default_rng(seed).choice(households, size=most, replace=False))


def purchase_counts(context: PointInTime) -> sp.csr_matrix:
    """Households x products purchase lines before ``context.start``, float32, built a chunk of
    households at a time: memory grows with the distinct (household, product) pairs, not with
    every purchase."""
    products_count = context.num_products

    def counted(users: np.ndarray, products: np.ndarray, _) -> tuple:
        keys = np.sort(users * products_count + products)  # np.unique's own sort is slower
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        pairs, counts = keys[first], np.diff(np.r_[first, len(keys)])
        return pairs // products_count, pairs % products_count, counts

    return households_matrix(context, counted, np.float32)
