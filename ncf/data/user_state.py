"""Every household's purchases, compact: what ranking reads a household's history from.

Three flat arrays (written as ``.npy`` files and memory-mapped when loaded, so that replicas and
scoring actors on one machine share the pages and load in milliseconds whatever the size):

* ``offsets`` (U + 1): household ``u``'s purchases are rows ``offsets[u]:offsets[u + 1]``;
* ``products`` (N, int32) and ``timestamps`` (N, int64, epoch seconds), sorted by household,
  then time, then product.

No Python object per household is ever built for all households at once, and
:meth:`UserStates.write` builds the arrays from a sorted stream of batches without holding the
log: what a driver preprocessing 10M households' purchases can afford.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

from ncf.data.timeline import UserTimeline

FILES = ("offsets", "products", "timestamps")
DTYPES = {"offsets": np.int64, "products": np.int32, "timestamps": np.int64}
# Purchases read at once by `chunks`. Product stats over a chunk take about 140 bytes a purchase
# with their temporaries (1.4 GB at 10M, measured), so about 600 MB a chunk whatever the log (what
# each stats task asks Ray for, ncf.data.preprocess.STATS_FIXED_BYTES); beside it they keep 24 x P
# hourly counts and the repurchase-cycle pairs, which grow with the log.
CHUNK_ROWS = 4_000_000

Purchases = Tuple[np.ndarray, np.ndarray, np.ndarray]  # households, products, epoch seconds


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
        if offsets[0] != 0 or (offsets[1:] < offsets[:-1]).any():  # a household's slice would be empty or another's
            raise ValueError("user state: offsets do not start at 0 and never decrease")
        self.offsets = offsets
        self.products = products
        self.timestamps = timestamps

    @staticmethod
    def from_purchases(users: np.ndarray, products: np.ndarray, timestamps: np.ndarray, num_users: int) -> "UserStates":
        """From one entry per purchase line, in any order."""
        users = np.asarray(users, np.int64)
        if len(users) and (users.min() < 0 or users.max() >= num_users):
            raise ValueError(f"household indices must be in [0, {num_users}): another vocabulary's households?")
        order = np.lexsort((products, timestamps, users))
        offsets = np.zeros(num_users + 1, np.int64)
        np.cumsum(np.bincount(users, minlength=num_users)[:num_users], out=offsets[1:])
        return UserStates(offsets, np.asarray(products, np.int32)[order], np.asarray(timestamps, np.int64)[order])

    @staticmethod
    def write(directory: str, batches: Iterable[Purchases], num_users: int, num_purchases: int) -> "UserStates":
        """The same arrays as :meth:`from_purchases`, written to ``directory`` from a stream of
        (households, products, timestamps) batches already sorted by household, then time, then
        product (Ray Data's distributed sort, in preprocessing), ``num_purchases`` rows in all.

        One pass, appending: memory is one batch and the households' U counts; the arrays are
        files (memory-mapped) written front to back, so each page is written once. Batches out of
        order, household indices out of range or another number of rows raise ValueError.
        """
        counts = np.zeros(num_users, np.int64)
        os.makedirs(directory, exist_ok=True)
        arrays = {
            name: np.lib.format.open_memmap(
                # The shape as plain ints: numpy 2 would write np.int64(...) into the header.
                os.path.join(directory, f"{name}.npy"),
                mode="w+",
                dtype=DTYPES[name],
                shape=(int(size),),
            )
            for name, size in (("offsets", num_users + 1), ("products", num_purchases), ("timestamps", num_purchases))
        }
        written, last = 0, None
        for users, products, timestamps in batches:
            users, products, timestamps = (np.asarray(a, np.int64) for a in (users, products, timestamps))
            if not len(users):
                continue
            if users.min() < 0 or users.max() >= num_users:
                raise ValueError(f"user state: household indices outside 0..{num_users - 1}")
            if not _in_order(users, timestamps, products, last):
                raise ValueError("user state: purchases not sorted by household, time and product")
            if written + len(users) > num_purchases:
                raise ValueError(f"user state: more than the {num_purchases:,} purchases announced")
            arrays["products"][written : written + len(users)] = products
            arrays["timestamps"][written : written + len(users)] = timestamps
            # Sorted by household: count runs (a bincount would cost O(households) a batch).
            first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            counts[users[first]] += np.diff(np.r_[first, len(users)])
            written += len(users)
            last = (users[-1], timestamps[-1], products[-1])
        if written != num_purchases:
            raise ValueError(f"user state: {written:,} purchases written, {num_purchases:,} announced")
        arrays["offsets"][0] = 0
        np.cumsum(counts, out=arrays["offsets"][1:])
        for array in arrays.values():
            array.flush()
        del arrays
        return UserStates.load(directory)

    def chunks(self, chunk_rows: int = CHUNK_ROWS, before: Optional[int] = None) -> Iterator[Purchases]:
        """(households, products, timestamps) of every purchase (strictly before ``before`` when
        given), whole households at a time, about ``chunk_rows`` purchases each (one household
        may exceed it): :meth:`all_purchases` without holding every purchase in memory."""
        for start, end in _household_chunks(self.offsets, chunk_rows):
            rows = slice(int(self.offsets[start]), int(self.offsets[end]))
            users = np.repeat(np.arange(start, end, dtype=np.int64), np.diff(self.offsets[start : end + 1]))
            chunk = users, np.asarray(self.products[rows], np.int64), np.asarray(self.timestamps[rows], np.int64)
            if before is not None:
                keep = chunk[2] < before
                chunk = tuple(a[keep] for a in chunk)
            yield chunk

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


def _household_chunks(offsets: np.ndarray, chunk_rows: int) -> Iterator[Tuple[int, int]]:
    """[start, end) household ranges of about ``chunk_rows`` purchases each, at least one
    household each, covering every household."""
    num_users = len(offsets) - 1
    start = 0
    while start < num_users:
        end = int(np.searchsorted(offsets, offsets[start] + chunk_rows, side="right")) - 1
        end = min(max(end, start + 1), num_users)
        yield start, end
        start = end


def _in_order(users: np.ndarray, timestamps: np.ndarray, products: np.ndarray, after: Optional[tuple]) -> bool:
    """Whether the rows are sorted by (household, time, product), the first not before ``after``."""
    if after is not None:
        users, timestamps, products = (np.r_[after[i], a] for i, a in enumerate((users, timestamps, products)))
    u, t, p = (a[1:] for a in (users, timestamps, products))
    up, tp, pp = (a[:-1] for a in (users, timestamps, products))
    return bool(np.all((u > up) | ((u == up) & ((t > tp) | ((t == tp) & (p >= pp))))))


_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: x -> x * it mod 2^64 is a bijection


def scrambled(users: np.ndarray) -> np.ndarray:
    """Each household index scrambled (Fibonacci hashing) into [0, 2^63), the same in every run:
    the training lists' order, and which households the co-purchase neighbours are fitted on
    when there are too many to read them all. Household indices follow purchase counts, so
    lists sorted by household filled each training batch with households of one activity level:
    the demo's model fell from 0.4197 / 0.4582 to 0.4058 / 0.4443 on the test weeks."""
    with np.errstate(over="ignore"):
        key = (np.asarray(users).astype(np.uint64) * _FIBONACCI) >> np.uint64(1)  # wraps; the shift keeps it an int64
    return key.astype(np.int64)
