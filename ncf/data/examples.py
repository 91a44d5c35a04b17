"""Training examples for "bought within the next H days", built per household by Ray Data.

Training asks the question ranking answers. At each cutoff ``c`` (several per run, one horizon
apart, so that no purchase is the label of two lists of a household: with overlapping windows
the embedding tables memorised households' labels and the held-out figures fell by a third
in the second epoch), every household that shops in ``[c, c + H)`` and shopped before ``c`` gives one *list*:
the moment of its first visit in the window (so its history is everything before ``c``), the
candidates a ranker would consider, each labelled 1 when bought in the window:

* its own past products (the ``own_candidates`` most bought, by the 90-day decayed count: what
  the ranking core puts first), every one of them, negatives kept at ``own_negative_rate``;
* the ``neighbour_candidates`` products nearest to its past products by co-purchase
  (:meth:`ncf.data.neighbours.ProductNeighbours.best`, none it bought: the ranking core's
  source of new products);
* the ``popular_candidates`` most bought products at the cutoff;
* ``sampled_negatives`` products drawn by popularity (``lines ** 0.75``) from the rest of the
  products known at the cutoff (and ``uniform_negatives`` drawn uniformly from them), and every
  product of the rest that it bought in the window.

Each candidate carries ``log_q``, the log-probability that a candidate of its kind is in the
list (0 for own, neighbour and popular products, ``log(own_negative_rate)`` when own negatives are
subsampled, ``log(min(1, S * p + U / K))`` for the sampled rest, K the products known at the
cutoff): training subtracts it from the logit, so the model learns the probability of a
purchase rather than the sampler's odds (the "logQ" correction), and its scores mean the same
for every candidate.

Every random draw is seeded by (seed, household, cutoff), so the output does not depend on how
Ray Data partitioned the households.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ncf.data import layout
from ncf.data.features import (
    FEATURES_VERSION,
    HALF_LIVES,
    NUM_FEATURES,
    Catalog,
    candidate_features,
    household_inputs,
)
from ncf.data.product_stats import ProductStats
from ncf.data.timeline import UserTimeline, run_offsets
from ncf.errors import InputError
from ncf.jsonio import read_json

DAY = 86_400
SAMPLING_POWER = 0.75

# Columns of a list row (one household at one cutoff).
USER, CUTOFF, MOMENT = "user", "cutoff", "moment"
HISTORY, HISTORY_AGE_DAYS, TIME_PARTS = "history", "history_age_days", "time_parts"
PRODUCT, LABEL, LOG_Q, FEATURES = "product", "label", "log_q", "features"
# Products bought in the window that nobody had bought before the cutoff: no candidate can be
# one (the evaluation's catalog is the same point in time), so they are counted, not labelled.
BOUGHT_UNKNOWN = "bought_unknown"
# What training reads of a list.
TRAINING_COLUMNS = [USER, HISTORY, HISTORY_AGE_DAYS, TIME_PARTS, PRODUCT, LABEL, LOG_Q, FEATURES]


def check_features_version(data: str) -> None:
    """Refuses (InputError, one line) DATA preprocessed by another feature definition than this
    code's (:data:`ncf.data.features.FEATURES_VERSION`): a model or ranker fitted on its training
    lists would score this code's features with weights learnt on other numbers, and a ranking
    from its state would read product stats of another definition."""
    version = layout.DataStats(data).features_version
    if version != FEATURES_VERSION:
        raise InputError(
            f"{data}: preprocessed for features version {version}, this code computes version "
            f"{FEATURES_VERSION}; run python -m jobs.preprocess again"
        )


# Training lists per written file, about: 40 MB of lists on Complete Journey. Ray Data's reader
# pays tens of milliseconds per file, so the groupby's many small blocks (800 files of ~20 lists)
# made every epoch wait ~18 s for its first batch.
LISTS_PER_FILE = 2048
# Arrow's list offsets are int32: one table's lists hold at most this many values. A file's lists
# (up to 2,048 households at every cutoff of a run) pass it at about 65 cutoffs of defaults
# (520 candidates x 31 features), or with thousands of negatives a list, so such rows are built
# as several chunks of one table; its writer sorts one cutoff's lists at a time in one array,
# which must fit.
MAX_LIST_VALUES = 2**31 - 1
# The most candidates a list may be asked for: one cutoff's lists of a file fit MAX_LIST_VALUES
# with room for each list's positives besides (the products bought in its window; 1,000).
MAX_LIST_CANDIDATES = MAX_LIST_VALUES // (LISTS_PER_FILE * NUM_FEATURES) - 1_000


@dataclass(frozen=True)
class ExampleConfig:
    """How training lists are built (recorded in ``stats.json``).

    Args:
        history_length: purchases kept in each list's history (L).
        horizon_days: H, the label window (default: the evaluation window, 5 weeks).
        cutoffs: cutoffs per training run (the latest ends where the run's labels must end).
        cutoff_step_days: days between consecutive cutoffs (default: the horizon; never less,
            so that the label windows do not overlap).
        own_candidates: most own products per list (the ranking core keeps as many).
        neighbour_candidates: products nearest to the household's by co-purchase per list.
        popular_candidates: most popular products per list.
        sampled_negatives: products drawn by popularity from the rest of the catalog per list.
        uniform_negatives: products drawn uniformly from the catalog known at the cutoff per list.
            Without them the lists never hold most of the long tail, and the model gave logits of
            100-900 to 20-100 such products per household (the two-stage ranking agreed with
            brute force on 0.864 of the top 10; with 100: 0.999, quality unchanged).
        own_negative_rate: share of own-product negatives kept.
        list_households: most households with training lists: when the log has more, the ones
            with the lowest scrambled index (:func:`ncf.data.user_state.scrambled`), the same at
            every cutoff; the others rank from the trained unknown household row, as households
            without a list always have. At 10M households every household's list at every
            cutoff would be about a terabyte, 3e10 candidates an epoch.
        seed: seed of all draws.
    """

    history_length: int = 20
    horizon_days: int = 35
    cutoffs: int = 4
    cutoff_step_days: Optional[int] = None  # the horizon
    own_candidates: int = 250
    neighbour_candidates: int = 100
    popular_candidates: int = 50
    sampled_negatives: int = 20
    uniform_negatives: int = 100
    own_negative_rate: float = 1.0
    list_households: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cutoff_step_days is None:
            object.__setattr__(self, "cutoff_step_days", self.horizon_days)  # frozen: set once, here
        if self.history_length < 1 or self.horizon_days < 1 or self.cutoffs < 1 or self.cutoff_step_days < 1:
            raise ValueError("history_length, horizon_days, cutoffs and cutoff_step_days must be >= 1")
        sizes = (self.own_candidates, self.neighbour_candidates, self.popular_candidates)
        if min(*sizes, self.sampled_negatives, self.uniform_negatives) < 0:
            raise ValueError(
                "own_candidates, neighbour_candidates, popular_candidates, sampled_negatives "
                "and uniform_negatives must be >= 0"
            )
        if sum(sizes) + self.sampled_negatives + self.uniform_negatives == 0:
            raise ValueError(
                "own_candidates, neighbour_candidates, popular_candidates, sampled_negatives and "
                "uniform_negatives are all 0: every list would hold its positives alone, nothing to rank them against"
            )
        if not 0.0 < self.own_negative_rate <= 1.0:
            raise ValueError("own_negative_rate must be in (0, 1]")
        if self.cutoff_step_days < self.horizon_days:
            raise ValueError(
                f"cutoff_step_days {self.cutoff_step_days} is below horizon_days {self.horizon_days}: the label "
                "windows of consecutive cutoffs would overlap (a purchase the label of two lists)"
            )
        if self.list_households < 1:
            raise ValueError("list_households must be >= 1")
        asked = sum(sizes) + self.sampled_negatives + self.uniform_negatives
        if asked > MAX_LIST_CANDIDATES:
            raise ValueError(
                f"own_candidates + neighbour_candidates + popular_candidates + sampled_negatives + uniform_negatives "
                f"is {asked:,}, above {MAX_LIST_CANDIDATES:,}: one cutoff's lists of a file ({LISTS_PER_FILE:,} "
                f"households) would pass Arrow's 2^31 list values ({NUM_FEATURES} features a candidate)"
            )

    def schedule(self, labels_end: int) -> List[int]:
        """The cutoffs of a run whose labels must end by ``labels_end`` (exclusive), latest first."""
        last = labels_end - self.horizon_days * DAY
        return [int(last - i * self.cutoff_step_days * DAY) for i in range(self.cutoffs)]


@dataclass(frozen=True)
class Cutoff:
    """What every household's list at one cutoff shares."""

    at: int
    stats: ProductStats
    popular: np.ndarray  # the popular_candidates most bought products
    sampling_cdf: np.ndarray  # over product indices; 0 for products unknown at the cutoff
    catalog: np.ndarray  # the product indices known at the cutoff

    @staticmethod
    def build(at: int, stats: ProductStats, popular_candidates: int) -> "Cutoff":
        weights = np.where(stats.lines > 0, stats.lines, 0.0) ** SAMPLING_POWER
        weights[0] = 0.0
        catalog = np.flatnonzero(weights > 0)
        order = stats.popularity_order
        # A product nobody bought before the cutoff is not in its catalog (a small catalog has
        # fewer than popular_candidates known ones): as a "popular" candidate it would be a label
        # the list's rules drop, so a household that bought it in the window would read 0.
        popular = order[stats.lines[order] > 0][:popular_candidates]
        return Cutoff(int(at), stats, popular, np.cumsum(weights), catalog)

    def known(self, products: np.ndarray) -> np.ndarray:
        """True for products bought by anyone before the cutoff (the catalog at the cutoff)."""
        return self.stats.lines[products] > 0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        total = self.sampling_cdf[-1]
        if n == 0 or total <= 0:
            return np.zeros(0, np.int64)
        return np.searchsorted(self.sampling_cdf, rng.random(n) * total, side="right")

    def sample_uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if n == 0 or len(self.catalog) == 0:
            return np.zeros(0, np.int64)
        return self.catalog[rng.integers(0, len(self.catalog), n)]

    def inclusion_log_q(self, products: np.ndarray, draws: int, uniform_draws: int = 0) -> np.ndarray:
        total = self.sampling_cdf[-1]
        # Each product's weight from the cumulative sums at it and before it: O(list), where a diff
        # of the whole cumulative array cost O(catalog) per list (3 ms at 1M products).
        products = np.asarray(products, np.int64)
        before = np.where(products > 0, self.sampling_cdf[np.maximum(products - 1, 0)], 0.0)
        p = (self.sampling_cdf[products] - before) / max(total, 1e-12)
        q = draws * p + uniform_draws / max(len(self.catalog), 1)
        return np.log(np.clip(q, 1e-12, 1.0))


def household_lists(
    group: Dict[str, np.ndarray], config: ExampleConfig, catalog: Catalog, cutoffs: Sequence[Cutoff]
) -> pa.Table:
    """The lists of one household (all its purchases in ``group``), one per cutoff where it shops."""
    return households_lists(group[USER], group[PRODUCT], group["ts"], config, catalog, cutoffs)


def households_lists(
    users: np.ndarray,
    products: np.ndarray,
    timestamps: np.ndarray,
    config: ExampleConfig,
    catalog: Catalog,
    cutoffs: Sequence[Cutoff],
) -> pa.Table:
    """The lists of the households of ``users`` (all their purchases, in any order), household
    after household in index order, each one's in the order of ``cutoffs``."""
    order = np.argsort(users, kind="stable")
    users, products, timestamps = users[order], products[order], timestamps[order]
    rows = []
    offsets = run_offsets(users)
    for start, end in zip(offsets[:-1], offsets[1:]):
        timeline = UserTimeline(products[start:end], timestamps[start:end])
        rows.extend(_one_list(timeline, int(users[start]), cutoff, config, catalog) for cutoff in cutoffs)
    return to_arrow([row for row in rows if row is not None], config.history_length)


def _one_list(timeline: UserTimeline, user: int, cutoff: Cutoff, config: ExampleConfig, catalog: Catalog):
    c, horizon = cutoff.at, config.horizon_days * DAY
    start, end = np.searchsorted(timeline.timestamps, [c, c + horizon], side="left")
    if start == 0 or end == start:
        return None  # no purchase before the cutoff, or none in the window
    moment = int(timeline.timestamps[start])
    window = np.unique(timeline.products[start:end])
    bought = window[cutoff.known(window)]
    rng = np.random.default_rng([config.seed, user, c])

    aggregates = timeline.aggregates(moment, HALF_LIVES)
    every_own = own = aggregates.most_bought(config.own_candidates)
    if config.own_negative_rate < 1.0:
        own = own[np.isin(own, bought) | (rng.random(len(own)) < config.own_negative_rate)]
    near = cutoff.stats.neighbours.best(aggregates, config.neighbour_candidates)
    # An own product left out stays out: drawn back as popular or by the samplers, it would be in
    # the list with another inclusion probability than the one its log_q says.
    popular = cutoff.popular[~np.isin(cutoff.popular, every_own) & ~np.isin(cutoff.popular, near)]
    listed = np.concatenate([own, near, popular])
    rest = np.concatenate([cutoff.sample(rng, config.sampled_negatives), bought])
    if config.uniform_negatives:  # drawn after the others, so the default's draws do not change
        rest = np.concatenate([rest, cutoff.sample_uniform(rng, config.uniform_negatives)])
    rest = np.unique(rest[~np.isin(rest, listed) & ~np.isin(rest, every_own) & (rest > 0)])

    candidates = np.concatenate([listed, rest]).astype(np.int64)
    log_q = np.concatenate(
        [
            # Kept at rate r. A positive is always kept, but log_q may not depend on the label (a
            # ranking has none): every own product carries the rate at which its kind is kept.
            np.full(len(own), np.log(config.own_negative_rate)),
            np.zeros(len(near) + len(popular)),
            cutoff.inclusion_log_q(rest, config.sampled_negatives, config.uniform_negatives),
        ]
    )
    history, ages, parts = household_inputs(timeline, moment, config.history_length)
    return {
        USER: user,
        CUTOFF: c,
        MOMENT: moment,
        HISTORY: history,
        HISTORY_AGE_DAYS: ages,
        TIME_PARTS: parts,
        PRODUCT: candidates,
        LABEL: np.isin(candidates, bought),
        LOG_Q: log_q,
        FEATURES: candidate_features(timeline, candidates, moment, catalog, cutoff.stats),
        BOUGHT_UNKNOWN: len(window) - len(bought),
    }


def to_arrow(rows: List[Dict], history_length: int) -> pa.Table:
    """List rows as an Arrow table: candidate columns are list columns (features flattened C x F)."""
    num_features = rows[0][FEATURES].shape[1] if rows else 1
    if len(rows) > 1 and sum(len(r[PRODUCT]) for r in rows) * num_features > MAX_LIST_VALUES:
        half = len(rows) // 2
        return pa.concat_tables([to_arrow(rows[:half], history_length), to_arrow(rows[half:], history_length)])

    def fixed(name: str, dtype, width: int) -> pa.Array:
        flat = np.concatenate([r[name] for r in rows]).astype(dtype) if rows else np.zeros(0, dtype)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)

    def ragged(name: str, dtype, width: int = 1) -> pa.Array:
        lengths = np.array([len(r[PRODUCT]) * width for r in rows], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)  # to_arrow kept them in range
        flat = (
            np.concatenate([np.asarray(r[name]).reshape(-1) for r in rows]).astype(dtype)
            if rows
            else np.zeros(0, dtype)
        )
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))

    return pa.table(
        {
            USER: pa.array([r[USER] for r in rows], pa.int64()),
            CUTOFF: pa.array([r[CUTOFF] for r in rows], pa.int64()),
            MOMENT: pa.array([r[MOMENT] for r in rows], pa.int64()),
            HISTORY: fixed(HISTORY, np.int32, history_length),
            HISTORY_AGE_DAYS: fixed(HISTORY_AGE_DAYS, np.float32, history_length),
            TIME_PARTS: fixed(TIME_PARTS, np.int16, 4),
            PRODUCT: ragged(PRODUCT, np.int32),
            LABEL: ragged(LABEL, np.int8),
            LOG_Q: ragged(LOG_Q, np.float32),
            FEATURES: ragged(FEATURES, np.float16, num_features),
            BOUGHT_UNKNOWN: pa.array([r[BOUGHT_UNKNOWN] for r in rows], pa.int32()),
        }
    )


def read_list_file(batch: Dict[str, np.ndarray]) -> pa.Table:
    """A Ray Data map over paths, one a batch: that file's lists, :data:`TRAINING_COLUMNS`.
    Defined here rather than beside the trainer so that a read task's process imports pyarrow
    and not torch (0.6 s and 130 MB against 4.1 s and 430 MB)."""
    import pyarrow.parquet as pq

    return pq.read_table(str(batch["path"][0]), columns=TRAINING_COLUMNS)


def lists_digest(data: str, cutoffs: Sequence[int]) -> str:
    """sha256 over how the training lists at ``cutoffs`` were built (``stats.json``'s example
    settings) and each list file's name and size: DATA preprocessed again with other list settings
    (a seed, the negatives) keeps its vocabularies and cutoffs, and changes this."""
    settings = (read_json(layout.stats_path(data)).get("config") or {}).get("examples")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for cutoff, directory in sorted(layout.existing_examples_dirs(data, cutoffs).items()):
        for name in sorted(os.listdir(directory)):
            digest.update(f"{cutoff}/{name}:{os.path.getsize(os.path.join(directory, name))}\0".encode())
    return digest.hexdigest()


def listed_rows(data: str, cutoffs: Sequence[int], num_users: int, num_products: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_users, num_products) boolean masks of the vocabulary indices the training lists at
    ``cutoffs`` hold: a list's household; a candidate or a history product. Only those embedding
    rows get gradients; any other row keeps its initial values (a household with purchases but
    none inside any label window is in no list), so ranking must not use it. Index 0, the unknown
    row, is trained by the unknown-row draws and always listed."""
    users, products = np.zeros(num_users, bool), np.zeros(num_products, bool)
    users[0] = products[0] = True
    for directory in layout.existing_examples_dirs(data, cutoffs).values():
        # Batch by batch: at scale one cutoff's candidate column alone is billions of entries.
        for batch in pads.dataset(directory, format="parquet").to_batches(columns=[USER, PRODUCT, HISTORY]):
            users[batch.column(USER).to_numpy()] = True
            for column in (PRODUCT, HISTORY):
                products[pc.list_flatten(batch.column(column)).to_numpy(zero_copy_only=False)] = True
    return users, products
