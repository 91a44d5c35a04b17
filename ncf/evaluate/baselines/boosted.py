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
is tuned on the validation weeks like every baseline.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.features import FEATURES, HALF_LIVES, NUM_FEATURES, candidate_features
from ncf.data.timeline import UserTimeline
from ncf.evaluate.baselines.base import PointInTime
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
    ``label``, ``log_q`` (0 for the own, neighbour and popular products), ``user``, ``product``
    and ``list`` (the row's list, numbered in the order read: a ranking objective's query groups).
    Refuses lists of another features version (:func:`ncf.data.examples.check_features_version`)."""
    E.check_features_version(data)
    columns = [E.USER, E.PRODUCT, E.FEATURES, E.LABEL, E.LOG_Q]
    directories = layout.existing_examples_dirs(data, cutoffs).values()
    table = pa.concat_tables(pads.dataset(d, format="parquet").to_table(columns=columns) for d in directories)

    def flat(name: str, dtype) -> np.ndarray:
        return pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False).astype(dtype)

    lengths = pc.list_value_length(table.column(E.PRODUCT)).to_numpy(zero_copy_only=False)
    return {
        "features": flat(E.FEATURES, np.float32).reshape(-1, NUM_FEATURES),
        "label": flat(E.LABEL, np.float32),
        "log_q": flat(E.LOG_Q, np.float32),
        "user": np.repeat(table.column(E.USER).to_numpy(), lengths).astype(np.int64),
        "product": flat(E.PRODUCT, np.int64),
        "list": np.repeat(np.arange(len(lengths)), lengths),
    }


def training_rows(data: str, cutoffs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(features N x F, labels N) of the unsampled candidates (own, neighbour and popular
    products: ``log_q`` 0) of the lists at ``cutoffs``."""
    lists = training_lists(data, cutoffs)
    unsampled = lists["log_q"] == 0.0
    return lists["features"][unsampled], lists["label"][unsampled]


class OwnNeighboursAndPopular:
    """Ranks a household's own products, the products nearest to them by co-purchase (none it
    bought) and the popular ones (the first stage of the boosted ranker, the training lists'
    unsampled candidates) by :meth:`score` of their :func:`ncf.data.features.candidate_features`,
    the model's feature function. Subclasses say how to score."""

    def __init__(self, context: PointInTime) -> None:
        self.context = context
        self.state = RankingState.load(context.data).as_of(context.start)
        settings = RankingSettings()
        self._own, self._near, self._popular = (
            settings.own_candidates,
            settings.neighbour_candidates,
            self.state.stats.popularity_order[: settings.popular_candidates],
        )

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        """C scores (higher is better) of ``candidates`` (C) with their C x F features."""
        raise NotImplementedError

    def features(self, user: int, timeline: UserTimeline, candidates: np.ndarray, at: int) -> np.ndarray:
        """The C x F features :meth:`score` reads: the model's (benchmarks add their own)."""
        return candidate_features(timeline, candidates, at, self.state.catalog, self.state.stats)

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        """The ``depth`` best of the household's own products, their neighbours and the popular ones."""
        self.context.check(at)
        timeline = self.state.states.timeline(user)
        aggregates = timeline.aggregates(at, HALF_LIVES)
        own, near = aggregates.most_bought(self._own), self.state.stats.neighbours.best(aggregates, self._near)
        candidates = np.unique(np.concatenate([own, near, self._popular]).astype(np.int64))
        candidates = candidates[self.context.catalog[candidates]]
        features = self.features(user, timeline, candidates, at)
        return candidates[np.argsort(-self.score(user, candidates, features), kind="stable")][:depth]


class BoostedRanker(OwnNeighboursAndPopular):
    """LightGBM over the training lists of ``context.data``'s validated run, ranking the
    households of the period ``context`` starts."""

    name = "boosted_ranker"

    def __init__(self, context: PointInTime, num_leaves: int = 63, rounds: int = 300, seed: int = 0) -> None:
        import lightgbm as lgb

        if context.data is None:
            raise ValueError("the boosted ranker trains on DATA's lists: build its PointInTime with data=DATA")
        self.params: Dict = {"num_leaves": num_leaves, "rounds": rounds, "seed": seed}
        x, y = training_rows(context.data, layout.DataStats(context.data).cutoffs(VALIDATED))
        train = lgb.Dataset(x, y, feature_name=list(FEATURES), free_raw_data=True)
        self.booster = lgb.train({**LIGHTGBM, "num_leaves": num_leaves, "seed": seed}, train, num_boost_round=rounds)
        super().__init__(context)

    def score(self, user: int, candidates: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features)
