"""The boosted ranker: LightGBM on the same purchase-timing features the model gets.

What a practitioner tries first on next-basket data (the Instacart recipe): a gradient-boosted
classifier of "bought within the next H days" over (household, candidate) rows with the
household's timing features. It trains on the model's own training lists of the validated run
(the same cutoffs, labels and features), on the candidates it ranks: the household's own
products, the products nearest to them by co-purchase and the popular ones (the lists' sampled
rest of the catalog carries logQ offsets of up to ~10 nats, which a booster spends its rounds
undoing: trained on them it ranked at 0.355 Recall@10 on Complete Journey, against 0.42
without). It ranks with
:func:`ncf.data.features.candidate_features`, the model's feature function. Its size (leaves)
is tuned on the validation weeks like every baseline. It trains on at most
:data:`MAX_TRAINING_ROWS` rows (whole households of a seeded sample beyond it).

Where the rankings leave out what the household bought (``exclude_purchased``) it ranks products
the household never bought, and still trains on every first-stage row, its own products' too:
trained on the never-bought rows alone (2026-12-06), its validation NDCG@10 on the two no-rebuy
logs of BENCHMARKS.md was the same (0.1872 against 0.1866, 0.1915 against 0.1913) and its test
NDCG@10 lower on both (0.1828 against 0.1866, 0.1845 against 0.1870): the weaker baseline was not
kept. The lists hold the ``neighbour_candidates`` (100) nearest neighbours a household, where that
mode ranks up to 250 (:class:`OwnNeighboursAndPopular`): it scores the neighbours past the 100th
from what the nearer ones taught it.

The ranking state (a pass over every purchase and the co-purchase neighbours' fit) and the
training rows are kept in the :class:`PointInTime`'s memo: the tuning's trials, built on one
context, load and read them once (a bench's seeds share the state; the rows are another seed's
draw, read again, one seed's at a time), and the evaluation drops them when the boosted ranker
is done (:meth:`PointInTime.one_baseline`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.features import FEATURES, HALF_LIVES, NUM_FEATURES, candidate_features
from ncf.data.timeline import UserTimeline
from ncf.evaluate.baselines.base import PointInTime, log
from ncf.evaluate.protocol import EVALUATION_CHUNK as DRAWN_KEPT  # the chunk it ranks, then covers
from ncf.rank.candidates import RankingSettings
from ncf.rank.state import RankingState
from ncf.splits import VALIDATED

LIGHTGBM = {
    "objective": "binary",
    "learning_rate": 0.05,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "verbose": -1,
    "num_threads": 2,
}


def training_lists(data: str, cutoffs: Sequence[int]) -> Dict[str, np.ndarray]:
    """Every candidate of the lists at ``cutoffs``, one row each: ``features`` (N x F),
    ``label``, ``log_q`` (0 for the neighbour and popular products and, at the default own negative rate of
    1, the own ones), ``user``, ``product``
    and ``list`` (the row's list, numbered in the order read: a ranking objective's query groups).
    Refuses lists of another features version (:func:`ncf.data.examples.check_features_version`).

    Every candidate, the sampled rest too (``bench.feature_mlp --rows all``), with the ids
    :func:`training_rows` does not keep: read as it reads them (:func:`_batches`), in one table."""
    columns = [E.USER, E.PRODUCT, E.FEATURES, E.LABEL, E.LOG_Q]
    table = pa.Table.from_batches(list(_batches(_list_directories(data, cutoffs), columns)))
    lengths = pc.list_value_length(table.column(E.PRODUCT)).to_numpy(zero_copy_only=False)
    return {
        "features": _flat(table, E.FEATURES, np.float32).reshape(-1, NUM_FEATURES),
        "label": _flat(table, E.LABEL, np.float32),
        "log_q": _flat(table, E.LOG_Q, np.float32),
        "user": np.repeat(table.column(E.USER).to_numpy(), lengths).astype(np.int64),
        "product": _flat(table, E.PRODUCT, np.int64),
        "list": np.repeat(np.arange(len(lengths)), lengths),
    }


# At most this many rows train the booster (CJ's validated run has 2.4M; at 1M list households it
# would be 125-210 GB of features): beyond it, a seeded sample of households, all lists of each.
MAX_TRAINING_ROWS = 10_000_000
_BATCH_ROWS = 4096  # lists read at a time: a batch's flattened rows stay in the tens of MB


def training_rows(
    data: str, cutoffs: Sequence[int], max_rows: int = MAX_TRAINING_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features N x F, labels N, log_q N) of the first stage's candidates (own, neighbour and
    popular products: :func:`first_stage`) of the lists at ``cutoffs``, in the order read.
    ``log_q`` is 0 but for own products kept at a rate (``--own-negative-rate``).

    Read a batch of lists at a time, so only the kept rows are ever held together. Where the lists
    have more than ``max_rows`` such rows, the households are taken in a ``seed``-ed random order
    while their rows fit (each one's every list, so no household's cadence is cut in half) and
    N <= ``max_rows``; else every row is kept, in the order :func:`training_lists` gives."""
    directories = _list_directories(data, cutoffs)
    own = own_log_q(data)
    per_user = _unsampled_rows_per_user(directories, own)
    total = int(per_user.sum())
    keep = None
    if total > max_rows:
        order = np.random.default_rng(seed).permutation(len(per_user))
        fits = np.cumsum(per_user[order]) <= max_rows
        keep = np.sort(order[fits & (per_user[order] > 0)])
        total = int(per_user[keep].sum())
        log(
            f"boosted ranker: training on {total:,} of {int(per_user.sum()):,} rows "
            f"({len(keep):,} of {int((per_user > 0).sum()):,} households; at most {max_rows:,})"
        )
    features = np.empty((total, NUM_FEATURES), np.float32)
    labels = np.empty(total, np.float32)
    log_q = np.empty(total, np.float32)
    filled = 0
    columns = [E.USER, E.FEATURES, E.LABEL, E.LOG_Q]
    where = None if keep is None else pc.field(E.USER).isin(pa.array(keep, pa.int64()))
    for batch in _batches(directories, columns, where):
        batch_log_q = _flat(batch, E.LOG_Q, np.float32)
        unsampled = first_stage(batch_log_q, own)
        n = int(unsampled.sum())
        features[filled : filled + n] = _flat(batch, E.FEATURES, np.float32).reshape(-1, NUM_FEATURES)[unsampled]
        labels[filled : filled + n] = _flat(batch, E.LABEL, np.float32)[unsampled]
        log_q[filled : filled + n] = batch_log_q[unsampled]
        filled += n
    if filled != total:
        raise RuntimeError(f"{data}'s training lists changed while read ({filled:,} rows, counted {total:,})")
    return features, labels, log_q


def _list_directories(data: str, cutoffs: Sequence[int]) -> List[str]:
    """The folders of the lists at ``cutoffs`` that have one, once they are of this code's
    features version (:func:`ncf.data.examples.check_features_version`)."""
    E.check_features_version(data)
    return list(layout.existing_examples_dirs(data, cutoffs).values())


def _batches(directories: Iterable[str], columns: List[str], where=None) -> Iterator[pa.RecordBatch]:
    """The lists of ``directories``, a few thousand at a time, in the order :func:`training_lists` reads them."""
    for directory in directories:
        dataset = pads.dataset(directory, format="parquet")
        yield from dataset.to_batches(columns=columns, filter=where, batch_size=_BATCH_ROWS)


def own_log_q(data: str) -> np.float32:
    """The ``log_q`` the lists of ``data`` give the household's own products: log of the share of
    own negatives kept (``jobs.preprocess --own-negative-rate``), 0 at the default of all."""
    return np.float32(np.log(float(layout.DataStats(data).examples.get("own_negative_rate", 1.0))))


def first_stage(log_q: np.ndarray, own_log_q: np.float32) -> np.ndarray:
    """Which rows are the first stage's candidates, those the booster ranks: the own products
    (``own_log_q``; below 0 where own negatives were sampled, which ``log_q == 0`` alone left out
    of its training though they are most of what it ranks), the neighbours and the popular ones
    (0), not the sampled rest."""
    return (log_q == 0.0) | (log_q == own_log_q)


def _unsampled_rows_per_user(directories: Iterable[str], own_log_q: np.float32) -> np.ndarray:
    """The first stage's rows (:func:`first_stage`) of each household's lists (U, by household index)."""
    per_user = np.zeros(0, np.int64)
    for batch in _batches(directories, [E.USER, E.LOG_Q]):
        lengths = pc.list_value_length(batch.column(E.LOG_Q)).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(len(lengths)), lengths)[first_stage(_flat(batch, E.LOG_Q, np.float32), own_log_q)]
        users = batch.column(E.USER).to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.bincount(users[rows], minlength=len(per_user))
        counts[: len(per_user)] += per_user
        per_user = counts
    return per_user


def _flat(lists, name: str, dtype) -> np.ndarray:
    """The flattened list column ``name`` of a table or record batch."""
    return pc.list_flatten(lists.column(name)).to_numpy(zero_copy_only=False).astype(dtype)


# The first-stage counts of the training lists (jobs.preprocess --own-candidates etc.), as
# stats.json records them under config.examples and RankingSettings names them.
LIST_SIZES = ("own_candidates", "neighbour_candidates", "popular_candidates")


def list_settings(data: str) -> RankingSettings:
    """:class:`RankingSettings` with the own, neighbour and popular counts the training lists of
    ``data`` were built with (``--own-candidates``, ``--neighbour-candidates``,
    ``--popular-candidates``), each one's default where ``stats.json`` does not record it (a
    DATA of before they were recorded)."""
    try:
        recorded = layout.DataStats(data).examples
    except (KeyError, TypeError):  # no settings recorded
        recorded = {}
    return dataclasses.replace(
        RankingSettings(), **{name: int(recorded[name]) for name in LIST_SIZES if recorded.get(name) is not None}
    )


def ranking_state(context: PointInTime) -> RankingState:
    """DATA's ranking state with the products' stats at the context's start, taken once for
    every ranker built on the context: the context's own (:meth:`PointInTime.of_state`) where it
    has one, its stats computed again only for another moment (a pass over every purchase and
    the co-purchase neighbours' fit), else loaded from DATA (about 110 s and a peak of 5-6 GiB at
    10M households)."""
    key = ("boosted_state", context.data, context.start)
    return context.memoised(key, lambda: _state_at(context))


def _state_at(context: PointInTime) -> RankingState:
    known = context.ranking
    if known is None or known.states is not context.states:
        return RankingState.load(context.data).as_of(context.start)
    return known if known.stats.cutoff == context.start else known.as_of(context.start)


class OwnNeighboursAndPopular:
    """Ranks a household's own products, the products nearest to them by co-purchase (none it
    bought) and the popular ones (the first stage of the boosted ranker, the training lists'
    :func:`first_stage` candidates, as many of each as the lists of ``context.data`` hold:
    :func:`list_settings`) by :meth:`score` of their :func:`ncf.data.features.candidate_features`,
    the model's feature function. Subclasses say how to score.

    Where the rankings leave out what the household bought (``context.exclude_purchased``), its
    own products are not candidates: the neighbours take their place and the popular products it
    never bought complete the list, ``RankingSettings.candidates`` (300) in all, as the model's
    first stage is completed, rather than what the own products leave of 400 (a household that
    bought 40 of the 50 most popular ranked about 110 products).
    """

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.state = ranking_state(context)
        self.settings = list_settings(context.data)
        order = np.asarray(self.state.stats.popularity_order, np.int64)
        self._popular = order[: self.settings.popular_candidates]
        # Every catalog product, most bought first: what completes a list without own products.
        self._by_popularity = order[context.catalog[order]] if context.exclude_purchased else order[:0]
        # The candidates rank drew for its latest (household, moment) pairs, which the evaluation
        # asks for right after ranking a chunk of them (their coverage): not drawn again.
        self._drawn: "OrderedDict[tuple, np.ndarray]" = OrderedDict()

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        """C scores (higher is better) of ``candidates`` (C) with their C x F features."""
        raise NotImplementedError

    def features(self, user: int, timeline: UserTimeline, candidates: np.ndarray, at: int) -> np.ndarray:
        """The C x F features :meth:`score` reads: the model's (benchmarks add their own)."""
        return candidate_features(timeline, candidates, at, self.state.catalog, self.state.stats)

    def candidates(self, aggregates) -> np.ndarray:
        """The catalog products ranked for a household with these :class:`ncf.data.timeline.Aggregates`
        (its purchases before the moment), in increasing index order (equal scores go to the lower one)."""
        s, neighbours = self.settings, self.state.stats.neighbours
        if not self.context.exclude_purchased:
            own, near = aggregates.most_bought(s.own_candidates), neighbours.best(aggregates, s.neighbour_candidates)
            candidates = np.unique(np.concatenate([own, near, self._popular]).astype(np.int64))
            return candidates[self.context.catalog[candidates]]
        # None it bought: the best neighbours in the own products' place, the popular products it
        # never bought after them (at least popular_candidates, more where the neighbours are few).
        near = neighbours.best(aggregates, max(s.candidates - s.popular_candidates, 0)).astype(np.int64)
        near = near[self.context.catalog[near]]
        need = max(s.candidates - len(near), 0)
        # Each product skipped is bought or a neighbour: the first need + |bought| + |near| hold every one taken.
        prefix = self._by_popularity[: need + len(aggregates.keys) + len(near)]
        popular = prefix[~np.isin(prefix, aggregates.keys) & ~np.isin(prefix, near)][:need]
        return np.unique(np.concatenate([near, popular]))

    def first_stage_candidates(self, users: np.ndarray, at: np.ndarray) -> List[np.ndarray]:
        """:meth:`candidates` of each (household, moment) pair: what :meth:`rank` reranks (those
        it drew lately taken as they were, each once)."""
        timelines = self.state.states.timeline
        listed = []
        for u, a in zip(users.tolist(), at.tolist()):
            drawn = self._drawn.pop((u, a), None)
            listed.append(self.candidates(timelines(u).aggregates(a, HALF_LIVES)) if drawn is None else drawn)
        return listed

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        """The ``depth`` best of :meth:`candidates`."""
        self.context.check(at)
        timeline = self.state.states.timeline(user)
        candidates = self.candidates(timeline.aggregates(at, HALF_LIVES))
        key = (int(user), int(at))
        self._drawn[key] = candidates
        self._drawn.move_to_end(key)  # ranked again: the latest, not the first to go
        if len(self._drawn) > DRAWN_KEPT:  # a tuning ranks without asking for them: the oldest go
            self._drawn.popitem(last=False)
        features = self.features(user, timeline, candidates, at)
        return candidates[np.argsort(-self.score(user, candidates, features), kind="stable")][:depth]


def booster_rows(context: PointInTime, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`training_rows` of the validated run, read once for every booster built on the
    context (each setting of the tuning's search, either mode)."""
    cutoffs = tuple(layout.DataStats(context.data).cutoffs(VALIDATED))
    key = ("boosted_rows", context.data, cutoffs, seed)
    return context.memoised(key, lambda: training_rows(context.data, cutoffs, seed=seed))


# The boosters trained on one DATA's validated lists with one seed (``"lists"``: what they were
# trained from, :func:`_lists_identity` and the cutoffs), by (num_leaves, rounds): the tuning
# grid's three, a few MB of trees each, so that whichever wins ranks the test weeks untrained again.
_BOOSTERS: Dict = {}


def _lists_identity(data: str) -> tuple:
    """DATA's folder and the identity of its stats.json file: a preprocessing swaps in a new
    directory (a new file, another inode), so a booster of the old lists is never taken for it."""
    info = os.stat(layout.stats_path(data))
    return os.path.realpath(data), info.st_dev, info.st_ino, info.st_mtime_ns


def log_q_offset(log_q: np.ndarray) -> Optional[np.ndarray]:
    """The booster's training offset: own negatives kept at a rate r (their log_q is log r)
    inflate own products' odds by 1/r against the neighbours and popular ones ranked beside
    them; an offset of -log_q in training takes it back out, and ranking reads the booster's
    own score alone. None where every row was kept (no offset)."""
    return -log_q if log_q.any() else None


class BoostedRanker(OwnNeighboursAndPopular):
    """LightGBM over the training lists of ``context.data``'s validated run, ranking the
    households of the period ``context`` starts."""

    name = "boosted_ranker"

    def __init__(self, context: PointInTime, num_leaves: int = 63, rounds: int = 300, seed: int = 0) -> None:
        import lightgbm as lgb

        if context.data is None:
            raise ValueError("the boosted ranker trains on DATA's lists: build its PointInTime with data=DATA")
        self.params: Dict = {"num_leaves": num_leaves, "rounds": rounds, "seed": seed}
        # The booster depends on the validated lists and its settings, not on the period: the one
        # the tuning trained for the winning settings ranks the test weeks too (a minute on
        # Complete Journey, trained twice before).
        lists = (*_lists_identity(context.data), tuple(layout.DataStats(context.data).cutoffs(VALIDATED)), seed)
        if _BOOSTERS.get("lists") != lists:  # other lists or another seed: the grid's boosters go
            _BOOSTERS.clear()
            _BOOSTERS["lists"] = lists
        if (num_leaves, rounds) not in _BOOSTERS:
            x, y, log_q = booster_rows(context, seed)
            train = lgb.Dataset(x, y, init_score=log_q_offset(log_q), feature_name=list(FEATURES), free_raw_data=True)
            params = {**LIGHTGBM, "num_leaves": num_leaves, "seed": seed}
            _BOOSTERS[num_leaves, rounds] = lgb.train(params, train, num_boost_round=rounds)
        self.booster = _BOOSTERS[num_leaves, rounds]
        super().__init__(context)

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)
