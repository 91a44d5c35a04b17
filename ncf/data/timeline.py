"""One user's purchases in time order, and the point-in-time features read from them.

Everything here looks strictly before a moment ``at``: purchases at ``at`` itself (the same
basket) and later never leak into the features of an example at ``at``.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ncf.data.features import NEVER_BOUGHT_DAYS, SECONDS_PER_DAY

_SHIFT = np.int64(32)  # product index in the high bits, seconds since the first purchase below


class UserTimeline:
    """A user's purchases (product indices, epoch seconds), sorted by time.

    Example::

        tl = UserTimeline(np.array([5, 7, 5]), np.array([100, 200, 300]))
        tl.history(np.array([300]), length=4)  # ([[7, 5, 0, 0]], ages in days)
        tl.repeat_stats(np.array([5]), np.array([300]))  # (count [1], days since)
    """

    def __init__(self, products: np.ndarray, timestamps: np.ndarray) -> None:
        order = np.lexsort((products, timestamps))
        self.products = np.asarray(products, dtype=np.int64)[order]
        self.timestamps = np.asarray(timestamps, dtype=np.int64)[order]
        self.t0 = np.int64(self.timestamps[0]) if len(self.timestamps) else np.int64(0)
        self._keys = np.sort((self.products << _SHIFT) | (self.timestamps - self.t0))
        # Distinct products in order of their first purchase, and when that was.
        _, first = np.unique(self.products, return_index=True)
        first = np.sort(first)
        self.first_products = self.products[first]
        self.first_timestamps = self.timestamps[first]

    def __len__(self) -> int:
        return len(self.products)

    def count_before(self, at: np.ndarray) -> np.ndarray:
        """Number of purchases strictly before each moment."""
        return np.searchsorted(self.timestamps, at, side="left")

    def products_before(self, at: int) -> np.ndarray:
        """Every purchase strictly before one moment, in time order (repeats included)."""
        return self.products[: int(self.count_before(np.array([at]))[0])]

    def distinct_before(self, at: np.ndarray) -> np.ndarray:
        """Number of distinct products bought strictly before each moment; the first
        ``distinct_before`` entries of ``first_products`` are those products."""
        return np.searchsorted(self.first_timestamps, at, side="left")

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

    def _bounds(self, products: np.ndarray, at: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = np.asarray(products, dtype=np.int64) << _SHIFT
        rel = np.clip(np.asarray(at, dtype=np.int64) - self.t0, 0, (1 << 32) - 1)
        first = np.searchsorted(self._keys, base, side="left")
        before = np.searchsorted(self._keys, base + rel, side="left")
        return base, first, before

    def repeat_stats(self, products: np.ndarray, at: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """How often each product was bought strictly before its moment, and days since the last time.

        Days since is ``NEVER_BOUGHT_DAYS`` when it was never bought before.
        """
        base, first, before = self._bounds(products, at)
        count = before - first
        if len(self._keys) == 0:
            return count, np.full(len(count), NEVER_BOUGHT_DAYS, dtype=np.float32)
        last = self.t0 + self._keys[np.maximum(before - 1, 0)] - base
        days = np.where(count > 0, (np.asarray(at) - last) / SECONDS_PER_DAY, NEVER_BOUGHT_DAYS)
        return count, np.minimum(days, NEVER_BOUGHT_DAYS).astype(np.float32)

    def bought_at(self, products: np.ndarray, at: np.ndarray) -> np.ndarray:
        """True where the product was bought exactly at that moment (in that basket)."""
        base, _, before = self._bounds(products, at)
        rel = np.clip(np.asarray(at, dtype=np.int64) - self.t0, 0, (1 << 32) - 1)
        return np.searchsorted(self._keys, base + rel, side="right") > before
