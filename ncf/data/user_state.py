"""Every known user's purchase sequence: what ranking reads a user's history from."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pyarrow.dataset as pads

from ncf.data.features import USER
from ncf.data.timeline import UserTimeline

_EMPTY = UserTimeline(np.zeros(0, np.int64), np.zeros(0, np.int64))


class UserStates:
    """User index -> purchases (product indices, epoch seconds), as preprocessing wrote them.

    Example::

        states = UserStates({3: (np.array([5, 7]), np.array([100, 200]))})
        states.timeline(3).history(np.array([300]), 2)  # [[7, 5]]
        len(states.timeline(99))  # 0: unknown users have no purchases
    """

    def __init__(self, sequences: Dict[int, Tuple[np.ndarray, np.ndarray]]) -> None:
        self._sequences = sequences
        self._timelines: Dict[int, UserTimeline] = {}

    @staticmethod
    def load(directory: str) -> "UserStates":
        table = pads.dataset(directory, format="parquet").to_table()
        users = table.column(USER).to_numpy()
        products = table.column("products").to_pylist()
        timestamps = table.column("timestamps").to_pylist()
        return UserStates(
            {int(u): (np.asarray(p, np.int64), np.asarray(t, np.int64)) for u, p, t in zip(users, products, timestamps)}
        )

    def __len__(self) -> int:
        return len(self._sequences)

    def __contains__(self, user: int) -> bool:
        return user in self._sequences

    def users(self) -> np.ndarray:
        return np.array(sorted(self._sequences), dtype=np.int64)

    def timeline(self, user: int) -> UserTimeline:
        if user not in self._sequences:
            return _EMPTY
        if user not in self._timelines:
            self._timelines[user] = UserTimeline(*self._sequences[user])
        return self._timelines[user]

    def all_purchases(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, product, timestamp) of every purchase, e.g. to fit baselines."""
        users, products, times = [], [], []
        for user, (p, t) in self._sequences.items():
            users.append(np.full(len(p), user, np.int64))
            products.append(p)
            times.append(t)
        if not users:
            return (np.zeros(0, np.int64),) * 3
        return np.concatenate(users), np.concatenate(products), np.concatenate(times)
