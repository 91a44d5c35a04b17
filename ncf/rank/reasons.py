"""What a ranked product's score owes to the household's own purchases: explanations the ranking uses.

The attention's "because you bought" weights are near uniform on Complete Journey, and hiding
the history from the attention moves the figures by less than their noise (BENCHMARKS.md,
"Ablations"): they describe the attention, not the ranking. What the scores do use is the
candidate's purchase timing. A :class:`Reason` states it (on how many days, how lately and how
regularly the household bought the product before the moment) and measures it by occlusion: the
model's probability for the product had the household never bought it, and had it never bought
anything in the product's category, each scored through the one ranking path (the same feature
function, the same model) on the household's timeline without those purchases.

The household keeps its own trained row, which training fitted to its purchases then: the
occlusion takes the purchases out of what the model reads at ranking time (the timing features,
the history, the candidates' neighbour scores), not out of the weights. A household left with no
purchase before the moment is a cold start, as any such household, and is scored with the
model's unknown household row.

Example::

    ranking = ranker.rank([user], [at], k=10, explain=True)[0]
    reason = ranking.reasons[0]
    reason.days_bought, reason.days_since_last, reason.typical_gap_days  # 6, 12.0, 14.5
    ranking.scores[0], reason.score_if_never_bought  # 0.71, 0.04: the score is the household's habit
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ncf.data.features import HALF_LIVES, Catalog
from ncf.data.timeline import UserTimeline


@dataclass(frozen=True)
class Reason:
    """Why one product ranks where it does for one household at one moment."""

    days_bought: int  # distinct days the household bought it before the moment
    days_since_last: Optional[float]  # None when never bought
    typical_gap_days: Optional[float]  # mean days between its purchase days; None under 2 days
    score_if_never_bought: float  # the model's probability without the household's purchases of it
    score_if_category_never_bought: float  # ... without its purchases in the product's category

    def as_dict(self) -> Dict:
        return asdict(self)


def purchase_facts(timeline: UserTimeline, product: int, at: int) -> Tuple[int, Optional[float], Optional[float]]:
    """(distinct days bought, days since the last purchase, typical gap in days) of one product
    before ``at``, from the summaries the features read (:meth:`UserTimeline.aggregates`)."""
    own = timeline.aggregates(at, HALF_LIVES)
    position = int(own.lookup(np.array([product]))[0])
    if position < 0:
        return 0, None, None
    gap = float(own.typical_gap[position])
    return int(own.days[position]), float(own.last_age[position]), None if np.isnan(gap) else gap


def without_product(timeline: UserTimeline, product: int) -> UserTimeline:
    """The household's timeline had it never bought ``product``."""
    return _without(timeline, product_lines(timeline, product))


def without_category(timeline: UserTimeline, product: int, catalog: Catalog) -> UserTimeline:
    """The household's timeline had it never bought anything in ``product``'s category (only the
    product itself for a product of the unknown category 0, which is no category)."""
    return _without(timeline, category_lines(timeline, product, catalog))


def product_lines(timeline: UserTimeline, product: int) -> np.ndarray:
    """Which of the timeline's lines :func:`without_product` drops (none: it is the timeline)."""
    return timeline.products == product


def category_lines(timeline: UserTimeline, product: int, catalog: Catalog) -> np.ndarray:
    """Which of the timeline's lines :func:`without_category` drops (none: it is the timeline)."""
    category = catalog.category[product]
    if category == 0:
        return product_lines(timeline, product)
    return catalog.category[timeline.products] == category


def _without(timeline: UserTimeline, dropped: np.ndarray) -> UserTimeline:
    if not dropped.any():
        return timeline
    kept = ~dropped
    return UserTimeline(timeline.products[kept], timeline.timestamps[kept], presorted=True)
