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

from typing import Dict, Optional, Tuple

import numpy as np

from ncf.evaluate.baselines.base import PointInTime, tie_scale
from ncf.moments import SECONDS_PER_DAY


def bought_before(
    context: PointInTime, user: int, at: int, half_life_days: Optional[float] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """The products the household bought before ``at`` (increasing indices) and their purchase
    counts, each purchase weighing 0.5 ** (age_days / ``half_life_days``) when one is given."""
    context.check(at)
    timeline = context.states.timeline(user)
    k = int(timeline.count_before(np.array([at]))[0])
    weights = None
    if half_life_days is not None:
        ages = (at - timeline.timestamps[:k]) / SECONDS_PER_DAY
        weights = np.exp2(-ages / half_life_days)
    products, row = np.unique(timeline.products[:k], return_inverse=True)
    # Summed in the purchases' order, as a bincount over every product index would.
    return products, np.bincount(row, weights=weights, minlength=len(products)).astype(np.float64, copy=False)


class OwnFrequencyRanker:
    name = "own_frequency"

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.params: Dict = {}

    def personal(self, user: int, at: int) -> Tuple[np.ndarray, np.ndarray]:
        """The products the household bought before ``at`` (increasing indices) and how often."""
        return bought_before(self.context, user, at)

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        # Popularity only breaks ties: it stays below one purchase.
        return self.context.scores_sparse(*self.personal(user, at), products, scale=1.0)

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        return self.context.rank_sparse(*self.personal(user, at), depth)


class DecayedFrequencyRanker:
    name = "decayed_frequency"

    def __init__(self, context: PointInTime, half_life_days: float = 120.0) -> None:
        if not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, not {half_life_days}")
        self.context = context
        self.half_life_days = float(half_life_days)
        self.params: Dict = {"half_life_days": half_life_days}

    def personal(self, user: int, at: int) -> Tuple[np.ndarray, np.ndarray]:
        """The products the household bought before ``at`` (increasing indices) and their decayed
        purchase counts."""
        return bought_before(self.context, user, at, self.half_life_days)

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        bought, values = self.personal(user, at)
        return self.context.scores_sparse(bought, values, products, tie_scale(values))

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        return self.context.rank_sparse(*self.personal(user, at), depth)
