"""Baselines ranked by the same evaluation code as the model.

* ``popularity``: the most bought products overall;
* ``own_frequency``: the user's own most bought products (ties and the rest by popularity),
  the strong baseline of grocery data where repeat purchases dominate;
* ``als``: implicit-feedback matrix factorisation (``implicit``'s ALS on BM25 weights).

Each ranks the whole catalog for a user from purchases strictly before ``at``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ncf.data.user_state import UserStates
from ncf.data.vocab import UNKNOWN_INDEX


class Ranker(Protocol):
    name: str

    def scores(self, user: int, at: int) -> np.ndarray:
        """Scores of every product index (higher is better) for a user at a moment."""


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, never the unknown product."""
    scores = scores.astype(np.float64, copy=True)
    scores[UNKNOWN_INDEX] = -np.inf
    k = min(k, len(scores) - 1)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class PopularityRanker:
    name = "popularity"

    def __init__(self, popularity: np.ndarray) -> None:
        self._scores = popularity.astype(np.float64)

    def scores(self, user: int, at: int) -> np.ndarray:
        return self._scores


class OwnFrequencyRanker:
    name = "own_frequency"

    def __init__(self, states: UserStates, popularity: np.ndarray) -> None:
        self.states = states
        # Popularity only breaks ties: it stays below one purchase.
        self._prior = popularity / (popularity.max() + 1.0)

    def scores(self, user: int, at: int) -> np.ndarray:
        bought = self.states.timeline(user).products_before(at)
        return self._prior + np.bincount(bought, minlength=len(self._prior))[: len(self._prior)]


class ALSRanker:
    name = "als"

    def __init__(
        self,
        states: UserStates,
        num_users: int,
        num_products: int,
        at: int,
        factors: int = 128,
        iterations: int = 15,
        seed: int = 0,
    ) -> None:
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight

        users, products, times = states.all_purchases()
        before = times < at
        counts = sp.coo_matrix(
            (np.ones(int(before.sum()), np.float32), (users[before], products[before])), shape=(num_users, num_products)
        ).tocsr()
        counts.sum_duplicates()
        weighted = bm25_weight(counts, K1=100, B=0.8).tocsr().astype(np.float32)
        self.model = AlternatingLeastSquares(
            factors=factors, regularization=0.05, iterations=iterations, random_state=seed, num_threads=2
        )
        # implicit parallelises itself; a second BLAS thread pool underneath only contends.
        with threadpool_limits(1, "blas"):
            self.model.fit(weighted, show_progress=False)
        self._users = np.asarray(self.model.user_factors)
        self._items = np.asarray(self.model.item_factors)

    def scores(self, user: int, at: int) -> np.ndarray:
        return self._items @ self._users[user]
