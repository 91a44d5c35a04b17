"""``popularity``: the most bought products before the period, the same list for everyone."""

from __future__ import annotations

from typing import Dict

import numpy as np

from ncf.evaluate.baselines.base import PointInTime


class PopularityRanker:
    name = "popularity"

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.params: Dict = {}
        self._scores = context.masked(context.popularity)
        self._ranked: Dict[int, np.ndarray] = {}

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        self.context.check(at)
        return self._scores[products]

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        self.context.check(at)
        if depth not in self._ranked:  # one list for every household
            self._ranked[depth] = self.context.rank(self._scores, depth)
        return self._ranked[depth]
