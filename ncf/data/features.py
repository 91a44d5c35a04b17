"""The model's inputs, computed by one path for training examples, evaluation and serving.

A ranking question is one household at one moment over C candidate products. Its inputs:

* household side: the ``L`` latest purchases before the moment (history, their ages in days)
  and the moment's time parts (hour, day of week, day of year, month);
* candidate side, C x :data:`NUM_FEATURES` purchase-timing features, all from purchases strictly
  before the moment, in four groups the model routes to its parts:

  - :data:`TIMING` (numeric, the MLP's timing block): does the household buy it, how often
    (lines, distinct days, distinct-day counts decayed at half-lives of 7/30/90/365 days,
    distinct days bought per basket of the household's), how due it is (days since the last
    purchase / its typical gap), the household's size and rhythm, and the product's global
    popularity and repurchase rate;
  - :data:`DURATIONS` (whole days, rounded down: ``TemporalEncoding``'s slots, and exact in
    the training lists' float16): days since the household last
    bought it, its typical gap (the product's global cycle when the household bought it on one
    day only or never), the product's global cycle, days since the household's last basket
    and its typical gap between baskets;
  - :data:`CATEGORY` (numeric) and :data:`CATEGORY_DURATIONS` (days), into ``CategoryHierarchy``:
    the same cadence at the level of the candidate's category, for sparse products (none for
    products of the unknown category 0);
  - :data:`NEIGHBOURS` (numeric, the model's neighbour block): the sum of the candidate's
    co-purchase cosines to the household's past products (:mod:`ncf.data.neighbours`), what
    other households who bought the same products bought: the signal for products new to it.

Days are UTC calendar days: a typical gap is the mean number of day numbers between distinct
purchase days, for the household (``gap``) as for all households (``product_cycle``).

:func:`candidate_features` is the only function that computes them: preprocessing calls it for
training examples and the ranking core for every request, so the two cannot drift apart.

Example::

    tl = UserTimeline(np.array([5, 7, 5]), np.array([0, 86_400, 7 * 86_400]))
    x = candidate_features(tl, np.array([5, 9]), 10 * 86_400, catalog, stats)  # 2 x NUM_FEATURES
    x[0, FEATURES.index("since")]  # 3.0 days (whole days, rounded down)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Tuple

import numpy as np

from ncf.data.product_stats import ProductStats
from ncf.data.timeline import UserTimeline
from ncf.moments import TIME_PARTS, time_parts_of

if TYPE_CHECKING:
    from ncf.data.vocab import Vocabulary

# Changes when a feature's definition changes: weights learnt on one version's numbers would read
# another's silently. Preprocessing records it beside the training lists (stats.json) and jobs
# refuse lists of another version; model directories record it in config.json (features_version).
# 2 (2026-12-01): the unknown category 0 is no category; own typical gaps in UTC day numbers.
# 3 (2026-12-01): the co-purchase neighbour score.
# 4 (2026-12-04): durations in whole days (rounded down, as TemporalEncoding reads them). The
#   training lists store features as float16, which rounds to the nearest: 255.97 days was slot
#   256 in training and 255 when ranking, for 7% of the "since" values of Complete Journey's lists.
FEATURES_VERSION = 4

HALF_LIVES = (7.0, 30.0, 90.0, 365.0)
CATEGORY_HALF_LIVES = (30.0, 365.0)
NEVER_DAYS = 366.0  # durations are clamped here: "never", or more than a year ago

TIMING = (
    "own",
    "lines",
    "days_bought",
    *(f"decayed_{int(h)}" for h in HALF_LIVES),
    "basket_share",
    "due",
    "due_known",
    "household_baskets",
    "household_products",
    "household_basket_size",
    "product_lines",
    "product_recent_lines",
    "product_buyers",
    "product_rebuy_rate",
)
DURATIONS = ("since", "gap", "product_cycle", "household_since", "household_gap")
CATEGORY = (
    "category_own",
    "category_days_bought",
    *(f"category_decayed_{int(h)}" for h in CATEGORY_HALF_LIVES),
    "category_due",
    "category_due_known",
)
CATEGORY_DURATIONS = ("category_since", "category_gap")
NEIGHBOURS = ("neighbour_score",)
FEATURES = TIMING + DURATIONS + CATEGORY + CATEGORY_DURATIONS + NEIGHBOURS
NUM_FEATURES = len(FEATURES)


def _span(group: Tuple[str, ...]) -> slice:
    start = FEATURES.index(group[0])
    return slice(start, start + len(group))


TIMING_COLUMNS, DURATION_COLUMNS = _span(TIMING), _span(DURATIONS)
CATEGORY_COLUMNS, CATEGORY_DURATION_COLUMNS = _span(CATEGORY), _span(CATEGORY_DURATIONS)
NEIGHBOUR_COLUMNS = _span(NEIGHBOURS)


@dataclass(frozen=True)
class Catalog:
    """Department and category index of every product index (0 = unknown)."""

    department: np.ndarray
    category: np.ndarray

    @staticmethod
    def of(products: Vocabulary) -> "Catalog":
        """A product vocabulary's hierarchy (its ``department_index`` and ``category_index``)."""
        return Catalog(products.column("department_index"), products.column("category_index"))

    @property
    def num_products(self) -> int:
        return len(self.category)


def household_inputs(timeline: UserTimeline, at: int, history_length: int) -> Tuple[np.ndarray, ...]:
    """(history L, history ages L in days, time parts 4) of one household at one moment."""
    history, ages = timeline.history(np.array([at]), history_length)
    parts = time_parts_of(np.array([at]))
    return history[0], ages[0], np.array([parts[k][0] for k in TIME_PARTS], np.int64)


def _log(x) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0))


def _days(x) -> np.ndarray:
    # fmin ignores NaN: "unknown" and anything beyond a year become NEVER_DAYS. Whole days: the
    # slot TemporalEncoding reads, the same in float16 (training lists) as in float32 (ranking).
    return np.floor(np.fmax(np.fmin(x, NEVER_DAYS), 0.0))


def _due(since: np.ndarray, gap: np.ndarray, known: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, _log(since / np.maximum(gap, 1.0)), 0.0)


def _check_stats_not_after(at, stats: ProductStats) -> None:
    """Refuses (ValueError) ``stats`` computed at a cutoff after the moment ``at`` (one moment, or
    an array of them): their popularity, cycles and neighbours would hold purchases the household
    could not have known of, and a label window's purchases would leak into the features. Every
    caller passes earlier stats today; this is the one function all features go through."""
    earliest = int(np.min(at))
    if earliest < int(stats.cutoff):
        raise ValueError(
            f"moment {earliest} is before the product statistics' cutoff {int(stats.cutoff)}: they hold later "
            "purchases; compute the features from stats at or before the moment"
        )


def candidate_features(
    timeline: UserTimeline, candidates: np.ndarray, at: int, catalog: Catalog, stats: ProductStats
) -> np.ndarray:
    """C x NUM_FEATURES float32 features of ``candidates`` for the household at ``at``, on
    float16's grid (the training lists' dtype, so ranking reads exactly what training read).

    Reads the household's purchases strictly before ``at`` and ``stats`` (the products as known
    at a cutoff no later than ``at``). Raises IndexError for an index outside the catalog
    (a negative one would silently read another product), ValueError for ``stats`` of a cutoff
    after ``at`` or of another catalog.
    """
    _check_stats_not_after(at, stats)
    if stats.num_products != catalog.num_products:  # another DATA's stats: wrong products' numbers
        raise ValueError(
            f"the product statistics hold {stats.num_products} products and the catalog {catalog.num_products}: "
            "they come from different DATA directories"
        )
    candidates = np.asarray(candidates, np.int64)
    if len(candidates) and (candidates.min() < 0 or candidates.max() >= catalog.num_products):
        raise IndexError(f"candidate product indices must be in [0, {catalog.num_products})")
    own = timeline.aggregates(at, HALF_LIVES)
    pos = own.lookup(candidates)
    bought = pos >= 0
    p = np.maximum(pos, 0)

    def mine(values: np.ndarray, default: float = 0.0) -> np.ndarray:
        return np.where(bought, values[p], default) if len(own.keys) else np.full(len(candidates), default)

    baskets, sizes = timeline.baskets_before(at)
    num_baskets = len(baskets)
    household_since = (at - baskets[-1]) / 86_400.0 if num_baskets else NEVER_DAYS
    household_gap = (baskets[-1] - baskets[0]) / 86_400.0 / (num_baskets - 1) if num_baskets > 1 else NEVER_DAYS

    since = mine(own.last_age, NEVER_DAYS)
    own_gap = mine(own.typical_gap, np.nan)
    cycle = stats.cycle_days[candidates]
    gap = np.where(np.isnan(own_gap), cycle, own_gap)
    due_known = bought & ~np.isnan(gap)
    days_bought = mine(own.days)
    decayed = (
        np.where(bought[:, None], own.decayed[p], 0.0)
        if len(own.keys)
        else np.zeros((len(candidates), len(HALF_LIVES)))
    )

    category = catalog.category[candidates]
    by_category = timeline.aggregates(at, CATEGORY_HALF_LIVES, categories=catalog.category)
    cpos = by_category.lookup(category)
    in_category = cpos >= 0
    c = np.maximum(cpos, 0)

    def ours(values: np.ndarray, default: float = 0.0) -> np.ndarray:
        if not len(by_category.keys):
            return np.full(len(candidates), default)
        return np.where(in_category, values[c], default)

    category_since = ours(by_category.last_age, NEVER_DAYS)
    category_gap = ours(by_category.typical_gap, np.nan)
    category_due_known = in_category & ~np.isnan(category_gap)
    category_decayed = (
        np.where(in_category[:, None], by_category.decayed[c], 0.0)
        if len(by_category.keys)
        else np.zeros((len(candidates), len(CATEGORY_HALF_LIVES)))
    )

    ones = np.ones(len(candidates))
    columns = [
        bought.astype(np.float64),
        _log(mine(own.lines)),
        _log(days_bought),
        *(_log(decayed[:, i]) for i in range(len(HALF_LIVES))),
        days_bought / max(num_baskets, 1),
        _due(since, gap, due_known),
        due_known.astype(np.float64),
        ones * _log(num_baskets),
        ones * _log(len(own.keys)),
        ones * _log(sizes.mean() if num_baskets else 0.0),
        _log(stats.lines[candidates]),
        _log(stats.recent_lines[candidates]),
        _log(stats.buyers[candidates]),
        stats.rebuy_rate[candidates],
        # DURATIONS
        _days(since),
        _days(gap),
        _days(cycle),
        ones * _days(household_since),
        ones * _days(household_gap),
        # CATEGORY
        in_category.astype(np.float64),
        _log(ours(by_category.days)),
        *(_log(category_decayed[:, i]) for i in range(len(CATEGORY_HALF_LIVES))),
        _due(category_since, category_gap, category_due_known),
        category_due_known.astype(np.float64),
        # CATEGORY_DURATIONS
        _days(category_since),
        _days(category_gap),
        # NEIGHBOURS
        _log(stats.neighbours.scores(own, candidates)),
    ]
    return on_lists_grid(np.stack(columns, axis=1))


def on_lists_grid(features: np.ndarray) -> np.ndarray:
    """``features`` (float64) as float32 numbers on float16's grid, rounded as the training lists
    were written (float64 -> float32 -> float16): the model reads the numbers it was trained on
    (log1p(12345) was 9.4219 in training, 9.4211 when ranking). Straight from float64, 1 value
    in 15,000 rounds the other way (1 + 2**-11 + 2**-30: 1.001, through float32 1.0)."""
    return features.astype(np.float32).astype(np.float16).astype(np.float32)
