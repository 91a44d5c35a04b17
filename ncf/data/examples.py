"""Per-user example building: positives of every split, negatives for training.

Run by Ray Data on each user's group of purchases (``groupby(user).map_groups``), so it only
ever sees one user's rows. Every random draw is seeded by (seed, user), so the output does
not depend on how the data was partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np
import pyarrow as pa

from ncf.data import features as F
from ncf.data.schema import TS
from ncf.data.timeline import UserTimeline
from ncf.splits import SPLIT, TEST, TRAIN, VAL

SAMPLING_MODES = ("uniform", "popularity")


@dataclass(frozen=True)
class ExampleConfig:
    """How examples are built.

    Args:
        history_length: purchases kept in each example's history (L).
        negatives_per_positive: training negatives drawn per training purchase.
        negative_sampling: ``popularity`` (as often as products are bought) or ``uniform``.
        own_negative_share: share of negatives drawn (uniformly) from the distinct products
            the user bought earlier: hard negatives that teach the model which of its staples
            a user buys when. Every example records the log-probability of its product under
            this sampler (``sampling_log_q``) so training can undo the sampling bias.
        seed: seed of all draws.
    """

    history_length: int = 20
    negatives_per_positive: int = 4
    negative_sampling: str = "popularity"
    own_negative_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negative_sampling not in SAMPLING_MODES:
            raise ValueError(f"negative_sampling must be one of {SAMPLING_MODES}, not {self.negative_sampling!r}")
        if not 0.0 <= self.own_negative_share <= 1.0:
            raise ValueError("own_negative_share must be in [0, 1]")
        if self.history_length < 1 or self.negatives_per_positive < 0:
            raise ValueError("history_length must be >= 1 and negatives_per_positive >= 0")


@dataclass(frozen=True)
class Catalog:
    """Per product index: department index, category index, and the sampling distribution."""

    department: np.ndarray
    category: np.ndarray
    sampling_cdf: np.ndarray  # cumulative weights over product indices (index 0 has weight 0)
    sampling_prob: np.ndarray  # probability of each product under catalog sampling

    @staticmethod
    def build(department: np.ndarray, category: np.ndarray, counts: np.ndarray, mode: str) -> "Catalog":
        weights = counts.astype(np.float64) if mode == "popularity" else np.ones(len(counts))
        weights[0] = 0.0  # never sample the unknown product
        cdf = np.cumsum(weights)
        return Catalog(department.astype(np.int32), category.astype(np.int32), cdf, weights / cdf[-1])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.searchsorted(self.sampling_cdf, rng.random(n) * self.sampling_cdf[-1], side="right")


OLDER = "older"  # training-period purchases before train_start: history only, no examples


def split_of(ts: np.ndarray, train_start: int, val_start: int, test_start: int) -> np.ndarray:
    return np.where(ts >= test_start, TEST, np.where(ts >= val_start, VAL, np.where(ts >= train_start, TRAIN, OLDER)))


def draw_negatives(
    timeline: UserTimeline, at: np.ndarray, config: ExampleConfig, catalog: Catalog, rng: np.random.Generator
) -> np.ndarray:
    """One negative product per moment in ``at``; -1 where no valid negative was found.

    A negative is never a product the user bought in that same basket.
    """
    n = len(at)
    distinct = timeline.distinct_before(at)
    own = (rng.random(n) < config.own_negative_share) & (distinct > 0)
    picked = timeline.first_products[
        np.minimum((rng.random(n) * distinct).astype(np.int64), max(len(timeline.first_products) - 1, 0))
    ]
    negatives = np.where(own, picked, catalog.sample(rng, n))
    for _ in range(3):
        clash = timeline.bought_at(negatives, at)
        if not clash.any():
            break
        negatives[clash] = catalog.sample(rng, int(clash.sum()))
    negatives[timeline.bought_at(negatives, at)] = -1
    return negatives


def sampling_log_q(
    timeline: UserTimeline,
    product: np.ndarray,
    at: np.ndarray,
    repeat_count: np.ndarray,
    config: ExampleConfig,
    catalog: Catalog,
) -> np.ndarray:
    """log q(product | user, moment) under :func:`draw_negatives`'s sampler.

    Training subtracts it from the logits (the "logQ" correction of sampled training), so the
    model learns log p(product | context) instead of p / q: without it, hard negatives drawn
    from a user's own purchases would cancel exactly the repeat signal the model must rank by.
    """
    distinct = timeline.distinct_before(at)
    share = np.where(distinct > 0, config.own_negative_share, 0.0)
    own = (repeat_count > 0) / np.maximum(distinct, 1)
    q = share * own + (1.0 - share) * catalog.sampling_prob[product]
    return np.log(np.maximum(q, 1e-12)).astype(np.float32)


def example_columns(
    timeline: UserTimeline, user: int, product: np.ndarray, at: np.ndarray, catalog: Catalog, history_length: int
) -> Dict[str, np.ndarray]:
    """Model input columns for (user, product, moment) rows; see :mod:`ncf.data.features`."""
    history, ages = timeline.history(at, history_length)
    count, days = timeline.repeat_stats(product, at)
    columns = {
        F.USER: np.full(len(product), user, dtype=np.int64),
        F.PRODUCT: product.astype(np.int64),
        F.DEPARTMENT: catalog.department[product],
        F.CATEGORY: catalog.category[product],
        F.HISTORY: history.astype(np.int32),
        F.HISTORY_AGE_DAYS: ages,
        F.REPEAT_COUNT: count.astype(np.float32),
        F.DAYS_SINCE: days,
    }
    columns.update({k: v.astype(np.int16) for k, v in F.time_parts_of(at).items()})
    return columns


def user_examples(
    group: Dict[str, np.ndarray],
    config: ExampleConfig,
    catalog: Catalog,
    train_start: int,
    val_start: int,
    test_start: int,
) -> pa.Table:
    """All examples of one user: every purchase since ``train_start`` as a positive (with its
    split) and ``negatives_per_positive`` negatives per training purchase."""
    user = int(group[F.USER][0])
    timeline = UserTimeline(group[F.PRODUCT], group[TS])
    split = split_of(timeline.timestamps, train_start, val_start, test_start)
    emitted = split != OLDER

    train_at = timeline.timestamps[split == TRAIN]
    rng = np.random.default_rng([config.seed, user])
    neg_at = np.repeat(train_at, config.negatives_per_positive)
    negatives = draw_negatives(timeline, neg_at, config, catalog, rng)
    found = negatives >= 0

    product = np.concatenate([timeline.products[emitted], negatives[found]])
    at = np.concatenate([timeline.timestamps[emitted], neg_at[found]])
    columns = example_columns(timeline, user, product, at, catalog, config.history_length)
    columns[F.SAMPLING_LOG_Q] = sampling_log_q(timeline, product, at, columns[F.REPEAT_COUNT], config, catalog)
    columns[F.LABEL] = np.concatenate([np.ones(int(emitted.sum()), np.float32), np.zeros(int(found.sum()), np.float32)])
    columns[SPLIT] = np.concatenate([split[emitted], np.full(int(found.sum()), TRAIN)])
    columns[TS] = at
    return to_arrow(columns)


def user_state(group: Dict[str, np.ndarray]) -> pa.Table:
    """One row per user: the purchase sequence (products, timestamps) in time order."""
    timeline = UserTimeline(group[F.PRODUCT], group[TS])
    return pa.table(
        {
            F.USER: pa.array([int(group[F.USER][0])], pa.int64()),
            "products": pa.array([timeline.products.astype(np.int32)], pa.list_(pa.int32())),
            "timestamps": pa.array([timeline.timestamps], pa.list_(pa.int64())),
        }
    )


def to_arrow(columns: Dict[str, np.ndarray]) -> pa.Table:
    """2-D columns become fixed-size lists (plain Parquet, readable without Ray)."""
    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)
