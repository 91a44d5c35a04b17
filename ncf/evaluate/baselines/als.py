"""``als``: implicit-feedback matrix factorisation (``implicit``'s ALS on BM25 weights), fitted
on every household's purchases before the period starts (at most :data:`MAX_FIT_HOUSEHOLDS` of
them: past that a seeded sample fits the products' factors and every other household's factor is
solved from its own purchases when it is ranked, the half-step ALS itself would take).

The weighting of the purchase counts (:data:`WEIGHTINGS`): ``bm25`` as implicit's examples
weigh their items x users matrix, each product a document and each household a term (a
household's idf: one that buys from everywhere says less about a product); ``bm25_product_idf``
the other way round, each household a document and each product a term (a staple many
households buy weighs less: what grocery repeats are made of); ``counts`` unweighted."""

from __future__ import annotations

from typing import Dict

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ncf.evaluate.baselines.base import PointInTime, log

WEIGHTINGS = ("bm25", "bm25_product_idf", "counts")

# Households whose factors the fit holds: 1M x 512 factors is 2 GB (10M households held 10M x 512
# floats twice while fitting, about 41 GB). Complete Journey's 2,500 are all fitted.
MAX_FIT_HOUSEHOLDS = 1_000_000


def weighted_counts(counts: sp.csr_matrix, weighting: str) -> sp.csr_matrix:
    """Households x products counts weighted as ``weighting`` says (see the module docstring)."""
    from implicit.nearest_neighbours import bm25_weight

    if weighting == "bm25":
        weighted = bm25_weight(counts.T, K1=100, B=0.8).T
    elif weighting == "bm25_product_idf":
        weighted = bm25_weight(counts, K1=100, B=0.8)
    elif weighting == "counts":
        weighted = counts
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
        self._weighted = weighted_counts(purchase_counts(context), weighting)
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
        self._row = None
        if fitted is not None:
            self._row = np.full(self._weighted.shape[0], -1, np.int64)
            self._row[fitted] = np.arange(len(fitted))

    def user_factor(self, user: int) -> np.ndarray:
        """The household's factor (F): the fit's, or for a household left out of it, the least-squares
        solution of its weighted purchases against the products' factors."""
        if self._row is None:
            return self._users[user]
        if self._row[user] >= 0:
            return self._users[self._row[user]]
        with threadpool_limits(1, "blas"):
            return self.model.recalculate_user(user, self._weighted[user])

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        self.context.check(at)
        # Every product's, as ranked: a product's dot product may differ in its last bit when
        # computed among fewer rows, and the sampled protocol counts ties.
        return self.context.masked(self._items @ self.user_factor(user))[products]

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        self.context.check(at)
        return self.context.rank(self._items @ self.user_factor(user), depth)


def fitted_households(weighted: sp.csr_matrix, most: int, seed: int):
    """The rows of ``weighted`` to fit, sorted: None (all of them) where at most ``most``
    households have purchases, else a ``seed``-ed sample of ``most`` of those that have."""
    buyers = np.flatnonzero(np.diff(weighted.indptr))
    if len(buyers) <= most:
        return None
    log(
        f"als: fitting {most:,} of {len(buyers):,} households (MAX_FIT_HOUSEHOLDS); the rest are solved "
        "from their purchases when ranked"
    )
    return np.sort(np.random.default_rng(seed).choice(buyers, size=most, replace=False))


def purchase_counts(context: PointInTime) -> sp.csr_matrix:
    """Households x products purchase lines before ``context.start``, float32, built a chunk of
    households at a time: memory grows with the distinct (household, product) pairs, not with
    every purchase."""
    shape = (context.num_users, context.num_products)
    rows, columns, values = [], [], []
    for users, products, _ in context.states.chunks(before=context.start):
        keys = np.sort(users * shape[1] + products)  # np.unique's own sort is slower
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
        pairs, counts = keys[first], np.diff(np.r_[first, len(keys)])
        rows.append(pairs // shape[1])
        columns.append(pairs % shape[1])
        values.append(counts.astype(np.float32))
    joined = [np.concatenate(part) if part else np.zeros(0) for part in (rows, columns, values)]
    counts = sp.coo_matrix((joined[2].astype(np.float32), (joined[0], joined[1])), shape=shape).tocsr()
    counts.sum_duplicates()
    return counts
