"""Personal frequency: a household's own most bought products, plain or recency-decayed.

* ``own_frequency``: score = the number of the household's purchases of the product before
  ``at``; the strong baseline of grocery data, where repeat purchases dominate.
* ``decayed_frequency``: score = sum over those purchases of 0.5 ** (age_days / half_life),
  age measured at ``at``: a product bought weekly until two months ago falls behind one
  bought weekly now. ``half_life_days`` is tuned on the validation weeks (an infinite
  half-life is ``own_frequency``).

Ties (every product the household never bought included) go by popularity before the period.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from ncf.evaluate.baselines.base import PointInTime, tie_prior, with_tie_prior
from ncf.moments import SECONDS_PER_DAY


class OwnFrequencyRanker:
    name = "own_frequency"

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.params: Dict = {}
        # Popularity only breaks ties in the dense scores: it stays below one purchase.
        self._prior = tie_prior(context.popularity)

    def personal(self, user: int, at: int) -> np.ndarray:
        self.context.check(at)
        bought = self.context.states.timeline(user).products_before(at)
        return np.bincount(bought, minlength=self.context.num_products)[: self.context.num_products].astype(np.float64)

    def scores(self, user: int, at: int) -> np.ndarray:
        return self.context.masked(self.personal(user, at) + self._prior)

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        return self.context.rank(self.personal(user, at), depth)


class DecayedFrequencyRanker:
    name = "decayed_frequency"

    def __init__(self, context: PointInTime, half_life_days: float = 120.0) -> None:
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, not {half_life_days}")
        self.context = context
        self.half_life_days = float(half_life_days)
        self.params: Dict = {"half_life_days": half_life_days}

    def personal(self, user: int, at: int) -> np.ndarray:
        """Decayed purchase counts of every product index (0 for products never bought)."""
        self.context.check(at)
        timeline = self.context.states.timeline(user)
        k = int(timeline.count_before(np.array([at]))[0])
        ages = (at - timeline.timestamps[:k]) / SECONDS_PER_DAY
        weights = np.exp2(-ages / self.half_life_days)
        n = self.context.num_products
        return np.bincount(timeline.products[:k], weights=weights, minlength=n)[:n]

    def scores(self, user: int, at: int) -> np.ndarray:
        return self.context.masked(with_tie_prior(self.personal(user, at), self.context.popularity))

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        return self.context.rank(self.personal(user, at), depth)
