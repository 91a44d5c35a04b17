"""``als``: implicit-feedback matrix factorisation (``implicit``'s ALS on BM25 weights), fitted
on every household's purchases before the period starts."""

from __future__ import annotations

from typing import Dict

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ncf.evaluate.baselines.base import PointInTime


class ALSRanker:
    name = "als"

    def __init__(
        self,
        context: PointInTime,
        factors: int = 128,
        iterations: int = 15,
        regularization: float = 0.05,
        seed: int = 0,
    ) -> None:
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight

        self.context = context
        self.params: Dict = {"factors": factors, "iterations": iterations, "regularization": regularization}
        users, products, times = context.states.all_purchases()
        before = times < context.start
        counts = sp.coo_matrix(
            (np.ones(int(before.sum()), np.float32), (users[before], products[before])),
            shape=(context.num_users, context.num_products),
        ).tocsr()
        counts.sum_duplicates()
        weighted = bm25_weight(counts, K1=100, B=0.8).tocsr().astype(np.float32)
        # implicit parallelises itself; a second BLAS thread pool underneath only contends. The
        # constructor is inside the limit too: it checks the BLAS threads (and warns) there.
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=factors, regularization=regularization, iterations=iterations, random_state=seed, num_threads=2
            )
            self.model.fit(weighted, show_progress=False)
        self._users = np.asarray(self.model.user_factors)
        self._items = np.asarray(self.model.item_factors)

    def scores(self, user: int, at: int) -> np.ndarray:
        self.context.check(at)
        return self.context.masked(self._items @ self._users[user])

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        self.context.check(at)
        return self.context.rank(self._items @ self._users[user], depth)
