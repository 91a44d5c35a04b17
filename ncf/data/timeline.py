"""One household's purchases in time order, and what is known of them at a moment.

Everything here looks strictly before a moment ``at``: purchases at ``at`` itself (the same
basket) and later never reach the features of an example at ``at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np

from ncf.moments import SECONDS_PER_DAY

_DAY = np.int64(86_400)


def positions_in(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Positions of ``keys`` in the sorted, distinct ``sorted_keys``; -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, np.int64)
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[position] == keys, position, -1)


def run_starts(grouped: np.ndarray) -> np.ndarray:
    """Where each run of equal values of ``grouped`` starts (its runs: groups, e.g. sorted keys)."""
    if len(grouped) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))


def run_offsets(grouped: np.ndarray) -> np.ndarray:
    """Each run's start, then ``len(grouped)``: R + 1 offsets, the CSR row pointers of the runs."""
    return np.r_[run_starts(grouped), len(grouped)].astype(np.int64)


@dataclass(frozen=True)
class Aggregates:
    """Per-key summaries of a household's purchases before a moment (keys: products or
    categories, sorted). Ages in days before the moment; days are distinct UTC calendar days."""

    keys: np.ndarray  # K distinct keys, sorted
    lines: np.ndarray  # K purchase lines
    days: np.ndarray  # K distinct days bought
    last_age: np.ndarray  # K days since the last purchase
    span_days: np.ndarray  # K UTC day numbers between the first and the last purchase day
    decayed: np.ndarray  # K x H distinct-day counts, each day weighted 0.5 ** (age / half-life)
    # What other modules derive from these summaries (the co-purchase neighbours' sums), kept as
    # long as the timeline keeps the summaries: the first stage and the features ask in turn.
    derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # What was derived holds its deriver (the neighbours' table): not sent along with the summaries.
        return {**self.__dict__, "derived": {}}

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Positions of ``keys`` in :attr:`keys`; -1 where the household never bought the key."""
        return positions_in(self.keys, keys)

    def most_bought(self, limit: int, half_life_column: int = 2) -> np.ndarray:
        """Up to ``limit`` keys, most bought first by one decayed count (by default the 90-day
        half-life: recent staples before old habits), ties by lines then key."""
        order = np.lexsort((self.keys, -self.lines, -self.decayed[:, half_life_column]))
        return self.keys[order[:limit]]

    @property
    def typical_gap(self) -> np.ndarray:
        """K mean days between distinct purchase days, in UTC day numbers as the products'
        global cycle (:class:`ncf.data.product_stats.ProductStats`) counts them; NaN when
        bought on one day only."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.days > 1, self.span_days / (self.days - 1), np.nan)


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys, a few times faster: one
    plain sort of each key packed with its position (numpy's stable sort of int64 is a timsort,
    the ranking path's largest single cost when households have thousands of lines)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    bits = max(int(n - 1).bit_length(), 1)
    if keys.dtype.kind not in "iub" or keys.min() < 0 or int(keys.max()) >= 1 << (63 - bits):
        return np.argsort(keys, kind="stable")
    packed = (keys.astype(np.int64) << np.int64(bits)) | np.arange(n, dtype=np.int64)
    packed.sort()
    return packed & np.int64((1 << bits) - 1)


def _aggregate(keys: np.ndarray, day: np.ndarray, ages: np.ndarray, half_lives: Sequence[float]) -> Aggregates:
    """``keys``, ``day`` (UTC day numbers), ``ages``: one entry per purchase line, in time order,
    so that each key's lines stay oldest first once grouped and the first line of a (key, day)
    starts its run; day counts and decays count a day once, at that line."""
    n = len(keys)
    order = stable_order(keys)
    grouped_keys, grouped_day = keys[order], day[order]
    starts = run_starts(grouped_keys)
    bounds = np.append(starts, n)  # K + 1
    ends = bounds[1:] - 1
    unique, lines = grouped_keys[starts], np.diff(bounds)
    k = len(unique)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.repeat(np.arange(k), lines)
    new_day = np.concatenate(([True], (grouped_keys[1:] != grouped_keys[:-1]) | (grouped_day[1:] != grouped_day[:-1])))
    day_first = np.zeros(n)
    day_first[order[new_day[:n]]] = 1.0
    days = np.bincount(inverse, weights=day_first, minlength=k)
    last_age = ages[order[ends]].astype(np.float64)  # the latest line is the youngest
    first_day, last_day = grouped_day[starts], grouped_day[ends]
    day_ages, day_keys = ages[day_first > 0], inverse[day_first > 0]
    decayed = np.stack(
        [np.bincount(day_keys, weights=0.5 ** (day_ages / h), minlength=k) for h in half_lives], axis=1
    ).reshape(k, len(half_lives))
    return Aggregates(unique, lines, days, last_age, (last_day - first_day).astype(np.float64), decayed)


class UserTimeline:
    """A household's purchases (product indices, epoch seconds), sorted by time.

    Example::

        tl = UserTimeline(np.array([5, 7, 5]), np.array([100, 200, 300]))
        tl.history(np.array([300]), length=4)  # ([[7, 5, 0, 0]], ages in days)
        tl.products_before(300)  # [5, 7]
    """

    def __init__(self, products: np.ndarray, timestamps: np.ndarray, presorted: bool = False) -> None:
        products = np.asarray(products, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        if not presorted:
            order = np.lexsort((products, timestamps))
            products, timestamps = products[order], timestamps[order]
        self.products = products
        self.timestamps = timestamps
        # The latest summaries per kind (products, categories): the first stage and the features
        # of one question read the same ones.
        self._summaries = {}

    def __len__(self) -> int:
        return len(self.products)

    # -- positions in time ---------------------------------------------------------------------

    def count_before(self, at: np.ndarray) -> np.ndarray:
        """Number of purchases strictly before each moment."""
        return np.searchsorted(self.timestamps, at, side="left")

    def _before(self, at: int) -> int:
        return int(np.searchsorted(self.timestamps, at, side="left"))

    def products_before(self, at: int) -> np.ndarray:
        """Every purchase strictly before one moment, in time order (repeats included)."""
        return self.products[: self._before(at)]

    def baskets_before(self, at: int) -> Tuple[np.ndarray, np.ndarray]:
        """(basket timestamps, lines per basket) strictly before ``at``, oldest first; a basket is
        the purchases of one timestamp."""
        times, sizes = np.unique(self.timestamps[: self._before(at)], return_counts=True)
        return times, sizes

    # -- what ranking reads ----------------------------------------------------------------------

    def history(self, at: np.ndarray, length: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``length`` latest purchases strictly before each moment, most recent first.

        Returns:
            B x length product indices (0 = padding) and B x length ages in days (0 for padding).
        """
        at = np.asarray(at, dtype=np.int64)
        k = self.count_before(at)
        position = k[:, None] - 1 - np.arange(length)[None, :]  # B x length, most recent first
        valid = position >= 0
        position = np.where(valid, position, 0)
        if len(self.products) == 0:
            return np.zeros(position.shape, np.int64), np.zeros(position.shape, np.float32)
        hist = np.where(valid, self.products[position], 0)
        ages = np.where(valid, (at[:, None] - self.timestamps[position]) / SECONDS_PER_DAY, 0.0)
        return hist, ages.astype(np.float32)

    def aggregates(self, at: int, half_lives: Sequence[float], categories: np.ndarray | None = None) -> Aggregates:
        """Per product (or, given ``categories`` indexed by product, per category) summaries of
        the purchases strictly before ``at``. Category 0 (unknown: products a partial catalog
        does not list) is no category: its purchases are left out of the category summaries,
        so unrelated products never pool into one cadence."""
        kind = categories is not None
        key, categories_seen, summary = self._summaries.get(kind, (None, None, None))
        if key == (at, tuple(half_lives)) and categories_seen is categories:
            return summary
        k = self._before(at)
        products, timestamps = self.products[:k], self.timestamps[:k]
        keys = products if categories is None else categories[products].astype(np.int64)
        if categories is not None:
            known = keys > 0
            keys, timestamps = keys[known], timestamps[known]
            k = len(keys)
        summary = _aggregate(keys, timestamps // _DAY, (at - timestamps) / SECONDS_PER_DAY, half_lives)
        self._summaries[kind] = ((at, tuple(half_lives)), categories, summary)
        return summary
