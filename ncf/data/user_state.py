"""Every household's purchases, compact: what ranking reads a household's history from.

Three flat arrays (written as ``.npy`` files and memory-mapped when loaded, so that replicas and
scoring actors on one machine share the pages and load in milliseconds whatever the size):

* ``offsets`` (U + 1): household ``u``'s purchases are rows ``offsets[u]:offsets[u + 1]``;
* ``products`` (N, int32) and ``timestamps`` (N, int64, epoch seconds), sorted by household,
  then time, then product.

No Python object per household is ever built for all households at once.
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from ncf.data.timeline import UserTimeline

FILES = ("offsets", "products", "timestamps")


class UserStates:
    """Household index -> purchases (product indices, epoch seconds) in time order.

    Example::

        states = UserStates.from_purchases(np.array([3, 3]), np.array([5, 7]), np.array([100, 200]), num_users=4)
        states.timeline(3).history(np.array([300]), 2)  # [[7, 5]]
        len(states.timeline(1))  # 0: households without purchases have an empty timeline
    """

    def __init__(self, offsets: np.ndarray, products: np.ndarray, timestamps: np.ndarray) -> None:
        if len(offsets) < 1 or offsets[-1] != len(products) or len(products) != len(timestamps):
            raise ValueError("user state: offsets, products and timestamps do not agree")
        self.offsets = offsets
        self.products = products
        self.timestamps = timestamps

    @staticmethod
    def from_purchases(users: np.ndarray, products: np.ndarray, timestamps: np.ndarray, num_users: int) -> "UserStates":
        """From one entry per purchase line, in any order."""
        users = np.asarray(users, np.int64)
        order = np.lexsort((products, timestamps, users))
        offsets = np.zeros(num_users + 1, np.int64)
        np.cumsum(np.bincount(users, minlength=num_users)[:num_users], out=offsets[1:])
        return UserStates(offsets, np.asarray(products, np.int32)[order], np.asarray(timestamps, np.int64)[order])

    @staticmethod
    def load(directory: str, mmap: bool = True) -> "UserStates":
        mode = "r" if mmap else None
        arrays = [np.load(os.path.join(directory, f"{name}.npy"), mmap_mode=mode) for name in FILES]
        return UserStates(*arrays)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        for name in FILES:
            np.save(os.path.join(directory, f"{name}.npy"), np.ascontiguousarray(getattr(self, name)))

    @property
    def num_users(self) -> int:
        """Rows of the state (the user vocabulary's size, the unknown index 0 included)."""
        return len(self.offsets) - 1

    def __len__(self) -> int:
        """Households with at least one purchase."""
        return int(np.count_nonzero(np.diff(self.offsets)))

    def __contains__(self, user: int) -> bool:
        return 0 <= user < self.num_users and self.offsets[user + 1] > self.offsets[user]

    def users(self) -> np.ndarray:
        """Households with at least one purchase, in index order."""
        return np.flatnonzero(np.diff(self.offsets)).astype(np.int64)

    def timeline(self, user: int) -> UserTimeline:
        if not 0 <= user < self.num_users:
            return UserTimeline(np.zeros(0, np.int64), np.zeros(0, np.int64), presorted=True)
        start, end = int(self.offsets[user]), int(self.offsets[user + 1])
        return UserTimeline(self.products[start:end], self.timestamps[start:end], presorted=True)

    def all_purchases(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(household, product, timestamp) of every purchase, e.g. to fit baselines."""
        users = np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.offsets))
        return users, np.asarray(self.products, np.int64), np.asarray(self.timestamps, np.int64)

    def before(self, cutoff: int) -> "UserStates":
        """The purchases strictly before ``cutoff`` (a copy)."""
        users, products, timestamps = self.all_purchases()
        keep = timestamps < cutoff
        return UserStates.from_purchases(users[keep], products[keep], timestamps[keep], self.num_users)
