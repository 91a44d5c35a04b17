"""``popularity``: the most bought products before the period, the same list for everyone."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ncf.evaluate.baselines.base import PointInTime, tie_prior


class PopularityRanker:
    name = "popularity"

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.params: Dict = {}
        self._sampled: Optional[np.ndarray] = None

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        """The purchase counts with a tie term in (0, 0.5] that falls with the product's place in
        the popularity order: the counts are whole numbers, so their order stays, and equal counts
        go as :meth:`rank` puts them (the sampled protocol counts a tie against the positive)."""
        self.context.check(at)
        if self._sampled is None:
            place = self.context.popularity_rank()
            self._sampled = self.context.masked(self.context.popularity + tie_prior(place, len(place)))
        return self._sampled[products]

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        self.context.check(at)
        # The catalog in popularity order (ties by index) is this ranking at every depth: no pass
        # over the catalog per depth asked.
        return self.context.by_popularity()[:depth]
