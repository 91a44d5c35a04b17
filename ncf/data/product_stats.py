"""What all households' purchases say about each product at a cutoff: popularity, cadence and
its co-purchased neighbours.

Computed from the purchases strictly before the cutoff only, so that a training example at a
cutoff, an evaluation at a period's start and serving at the data's end each see the products
as they were known then. Written once with the state (``DATA/product_stats/``) for serving.

Example::

    stats = ProductStats.compute(states, category, cutoff=1511740800)
    stats.lines[42], stats.rebuy_rate[42], stats.cycle_days[42]
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ncf.data.neighbours import (
    NEIGHBOURS_K,
    NEIGHBOURS_MAX_PRODUCTS,
    NEIGHBOURS_MAX_WORK,
    ProductNeighbours,
    SampledPairs,
)
from ncf.data.timeline import run_offsets
from ncf.data.user_state import CHUNK_ROWS, UserStates
from ncf.data.vocab import UNKNOWN_INDEX
from ncf.moments import hours_of

RECENT_DAYS = 28
HOURLY_TOP = 200  # cold-start list length per hour of the day
_DAY = 86_400


@dataclass
class ProductStats:
    """Per product index (0 = unknown: zero counts, NaN cycle), from purchases before ``cutoff``.

    ``cycle_days`` is the median, over the households that bought the product on two UTC days or
    more, of their mean days between purchase days (NaN when nobody rebought it).
    """

    cutoff: int
    lines: np.ndarray  # purchase lines
    recent_lines: np.ndarray  # purchase lines in the RECENT_DAYS before the cutoff
    buyers: np.ndarray  # distinct households
    rebuy_rate: np.ndarray  # share of buyers who bought it on two days or more
    cycle_days: np.ndarray
    by_hour: np.ndarray  # 24 x HOURLY_TOP most bought products per hour of day (cold start)
    neighbours: ProductNeighbours  # each product's nearest co-purchased products
    # Every purchase before the cutoff stamped 00:00 UTC: a log of dates (ncf.moments.after_the_data).
    # None: saved by code that did not count them.
    dates_only: Optional[bool] = None

    @property
    def num_products(self) -> int:
        return len(self.lines)

    @property
    def popularity_order(self) -> np.ndarray:
        """Product indices, most bought first (recent lines, then all lines), never index 0."""
        order = np.lexsort((-self.lines, -self.recent_lines))
        return order[order != 0]

    @staticmethod
    def compute(
        states: UserStates,
        category: np.ndarray,
        cutoff: int,
        chunk_rows: int = CHUNK_ROWS,
        neighbours_k: int = NEIGHBOURS_K,
        neighbours_max_products: int = NEIGHBOURS_MAX_PRODUCTS,
        neighbours_max_work: float = NEIGHBOURS_MAX_WORK,
    ) -> "ProductStats":
        """From every purchase of ``states`` strictly before ``cutoff``; ``category`` gives each
        product index's category (its length is the number of products). Read a chunk of
        households at a time (``chunk_rows`` purchases), so memory grows with the products and
        the distinct (household, product) pairs, not with the purchases. The neighbours are fitted
        on the pairs :class:`SampledPairs` keeps within those two bounds."""
        n = len(category)
        sample = SampledPairs(neighbours_max_products, neighbours_max_work)
        lines, recent, buyers, rebuyers = (np.zeros(n) for _ in range(4))
        by_hour = np.zeros((24, n))
        cycle_products, cycle_gaps = [], []
        purchases = at_midnight = 0
        for users, products, ts in states.chunks(chunk_rows, before=cutoff):
            purchases += len(ts)
            at_midnight += int(np.count_nonzero(ts % _DAY == 0))
            lines += np.bincount(products, minlength=n)
            recent += np.bincount(products[ts >= cutoff - RECENT_DAYS * _DAY], minlength=n)
            by_hour += np.bincount(hours_of(ts) * n + products, minlength=24 * n).reshape(24, n)
            pairs = _pairs(users, products, ts // _DAY)
            buyers += np.bincount(pairs.product, minlength=n)
            rebuyers += np.bincount(pairs.product, weights=pairs.days > 1, minlength=n)
            cycle_products.append(pairs.product[pairs.days > 1])
            cycle_gaps.append(pairs.gap[pairs.days > 1])
            known = pairs.product > 0
            sample.add(pairs.user[known], pairs.product[known], pairs.last_day[known])
        for counted in (lines, recent, buyers, rebuyers, by_hour.T):  # the unknown row, as documented
            counted[UNKNOWN_INDEX] = 0
        with np.errstate(invalid="ignore", divide="ignore"):
            rebuy_rate = np.where(buyers > 0, rebuyers / buyers, 0.0)
        cycle = _median_by(_joined(cycle_products, np.int64), _joined(cycle_gaps, np.float64), n)
        cycle[UNKNOWN_INDEX] = np.nan
        neighbours = ProductNeighbours.fit_rows(*sample.rows(), n, neighbours_k)
        if sample.households_kept < sample.households_seen:  # said, since it changes the neighbours
            print(
                f"[preprocess] neighbours at cutoff {cutoff}: fitted on {sample.households_kept:,} of "
                f"{sample.households_seen:,} households (their work within {neighbours_max_work:.0e})",
                file=sys.stderr,  # also inside jobs whose stdout is JSON (a replay, the evaluation)
                flush=True,
            )
        dates_only = purchases > 0 and at_midnight == purchases
        by_hours = _by_hour(by_hour, lines)
        return ProductStats(int(cutoff), lines, recent, buyers, rebuy_rate, cycle, by_hours, neighbours, dates_only)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        columns = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_COLUMNS}
        metadata = {"cutoff": str(self.cutoff)}
        if self.dates_only is not None:
            metadata[DATES_ONLY] = str(int(self.dates_only))
        table = pa.table(columns).replace_schema_metadata(metadata)
        pq.write_table(table, os.path.join(directory, "products.parquet"))
        np.save(os.path.join(directory, "by_hour.npy"), self.by_hour)
        self.neighbours.save(directory)

    @staticmethod
    def load(directory: str) -> "ProductStats":
        table = pq.read_table(os.path.join(directory, "products.parquet"))
        columns = {name: table.column(name).to_numpy() for name in table.column_names}
        cutoff = int(table.schema.metadata[b"cutoff"])
        return ProductStats(
            cutoff=cutoff,
            dates_only=_dates_only(table.schema.metadata),
            by_hour=np.load(os.path.join(directory, "by_hour.npy"), allow_pickle=False),
            neighbours=ProductNeighbours.load(directory, table.num_rows),
            **columns,
        )

    @staticmethod
    def dates_only_in(directory: str) -> Optional[bool]:
        """:attr:`dates_only` of the stats saved in ``directory``, read from their schema alone;
        None where it cannot be read (the state's own checks say what is wrong with it)."""
        try:
            return _dates_only(pq.read_schema(os.path.join(directory, "products.parquet")).metadata)
        except (OSError, ValueError):
            return None


NOT_COLUMNS = ("cutoff", "by_hour", "neighbours", "dates_only")  # saved beside products.parquet
DATES_ONLY = "dates_only"


def _dates_only(metadata) -> Optional[bool]:
    value = (metadata or {}).get(DATES_ONLY.encode())
    return None if value is None else value == b"1"


@dataclass
class _Pairs:
    """One entry per (household, product) pair bought, sorted by household and product: the
    household, the product, its distinct purchase days, the mean days between them (NaN for one
    day) and the last one."""

    user: np.ndarray
    product: np.ndarray
    days: np.ndarray
    gap: np.ndarray
    last_day: np.ndarray


def _pairs(users: np.ndarray, products: np.ndarray, days: np.ndarray) -> _Pairs:
    """The (household, product) pairs of (household, product, day) entries."""
    if len(users) == 0:
        empty = np.zeros(0, np.int64)
        return _Pairs(empty, empty, empty, np.zeros(0), empty)
    u, p, d = _distinct_sorted(users, products, days)
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (p[1:] != p[:-1])])
    ends = np.r_[starts[1:], len(u)]
    pair_days = ends - starts
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = (d[ends - 1] - d[starts]) / (pair_days - 1)
    return _Pairs(u[starts], p[starts], pair_days, gap, d[ends - 1])


def _distinct_sorted(users: np.ndarray, products: np.ndarray, days: np.ndarray) -> tuple:
    """The distinct (household, product, day) entries, sorted by household, product, day."""
    first_user, first_day = users.min(), days.min()
    spans = (int(users.max() - first_user) + 1, int(products.max()) + 1, int(days.max() - first_day) + 1)
    if spans[0] * spans[1] * spans[2] < 2**62:
        # One int64 key per entry: one sort instead of a three-key lexsort (np.unique was slower still).
        key = np.sort(np.ravel_multi_index((users - first_user, products, days - first_day), spans))
        u, p, d = np.unravel_index(key[np.r_[True, key[1:] != key[:-1]]], spans)
        return u + first_user, p, d + first_day
    order = np.lexsort((days, products, users))
    u, p, d = users[order], products[order], days[order]
    distinct = np.r_[True, (u[1:] != u[:-1]) | (p[1:] != p[:-1]) | (d[1:] != d[:-1])]
    return u[distinct], p[distinct], d[distinct]


def _joined(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _median_by(keys: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of ``values`` per key in 0..n-1 (NaN for keys without values)."""
    out = np.full(n, np.nan)
    if len(keys) == 0:
        return out
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    offsets = run_offsets(keys)
    starts, counts = offsets[:-1], np.diff(offsets)
    low, high = starts + (counts - 1) // 2, starts + counts // 2
    out[keys[starts]] = (values[low] + values[high]) / 2.0
    return out


def _by_hour(counts_by_hour: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """The HOURLY_TOP most bought products at each hour of the day (UTC), from 24 x P purchase
    counts; hours with fewer products are completed by overall popularity."""
    overall = np.argsort(-lines, kind="stable")
    overall = overall[overall != 0]
    top = min(HOURLY_TOP, len(overall))
    out = np.zeros((24, top), np.int64)
    for hour in range(24):
        counts = counts_by_hour[hour].copy()
        counts[0] = -1
        order = np.lexsort((-lines, -counts))
        ranked = order[counts[order] > 0][:top]
        out[hour] = np.concatenate([ranked, overall[~np.isin(overall, ranked)]])[:top]
    return out
