"""The boosted ranker baseline: LightGBM on the same purchase-timing features the model gets.

What a practitioner tries first on next-basket data (the Instacart recipe): a gradient-boosted
classifier of "bought within the next H days" over (household, candidate) rows with the
household's timing features. It trains on the model's own training lists (the same cutoffs,
candidates and labels; the sampled negatives' ``log_q`` enters as LightGBM's ``init_score``, so
the trees learn the same unbiased logit the model does) and ranks the same first-stage
candidates (own products and popular ones) with :func:`ncf.data.features.candidate_features`.
Its size (leaves, rounds) is tuned on the validation weeks by the same full-ranking code.

Example::

    ranker = BoostedRanker.fit(data, VALIDATED, params={"num_leaves": 63})
    products = ranker.rank_many(state, users, at, depth=100)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ncf.data import examples as E
from ncf.data import layout
from ncf.data.features import FEATURES, HALF_LIVES, NUM_FEATURES, candidate_features
from ncf.rank.state import RankingState

NAME = "boosted_ranker"
DEFAULTS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "verbose": -1,
    "num_threads": 2,
    "seed": 0,
}
GRID = [{"num_leaves": 31, "rounds": 200}, {"num_leaves": 63, "rounds": 300}, {"num_leaves": 127, "rounds": 300}]
OWN_CANDIDATES, POPULAR_CANDIDATES = 250, 50


def training_rows(data: str, cutoffs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features N x F, labels N, log_q N) of every candidate of the lists at ``cutoffs``."""
    columns = [E.FEATURES, E.LABEL, E.LOG_Q]
    table = pa.concat_tables(
        pads.dataset(layout.examples_dir(data, c), format="parquet").to_table(columns=columns) for c in cutoffs
    )

    def flat(name: str, dtype) -> np.ndarray:
        return pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False).astype(dtype)

    return flat(E.FEATURES, np.float32).reshape(-1, NUM_FEATURES), flat(E.LABEL, np.float32), flat(E.LOG_Q, np.float64)


@dataclass
class BoostedRanker:
    """A fitted LightGBM booster and the first-stage sizes it ranks."""

    booster: object
    params: Dict
    name: str = NAME

    @staticmethod
    def fit(data: str, run: str, params: Dict) -> "BoostedRanker":
        import lightgbm as lgb

        cutoffs = layout.DataStats(data).cutoffs(run)
        x, y, log_q = training_rows(data, cutoffs)
        settings = {**DEFAULTS, **{k: v for k, v in params.items() if k != "rounds"}}
        # The sampler's log-probability as the starting score: the trees learn logit - log q.
        train = lgb.Dataset(x, y, init_score=-log_q, feature_name=list(FEATURES), free_raw_data=True)
        booster = lgb.train(settings, train, num_boost_round=int(params.get("rounds", 300)))
        return BoostedRanker(booster, dict(params))

    def rank_many(self, state: RankingState, users: np.ndarray, at: np.ndarray, depth: int) -> List[np.ndarray]:
        """Each household's top ``depth`` products among its own and the popular ones."""
        known = state.stats.lines > 0
        popular = state.stats.popularity_order[:POPULAR_CANDIDATES]
        out = []
        for user, moment in zip(users.tolist(), at.tolist()):
            timeline = state.states.timeline(user)
            own = timeline.aggregates(moment, HALF_LIVES).most_bought(OWN_CANDIDATES)
            candidates = np.unique(np.concatenate([own, popular]).astype(np.int64))
            candidates = candidates[known[candidates]]
            scores = self.booster.predict(candidate_features(timeline, candidates, moment, state.catalog, state.stats))
            out.append(candidates[np.argsort(-scores, kind="stable")][:depth])
        return out
