"""Held-out evaluation of the model and the baselines, by the same code.

Two protocols:

* full ranking (the one that decides): every user with purchases in the period (and known
  before it) gets the whole catalog ranked at the moment of their first visit in the period,
  from their purchases before it (none of the period's purchases are visible: the first
  visit is the first); relevant = the distinct known products they bought in the period. Recall@10, NDCG@10,
  HR@10 and MRR (first relevant item within the top 100).
* sampled (the NCF paper's, for comparison with the literature): each user's first purchase
  in the period against 99 products they never bought; HR@10 and NDCG@10. It flatters every
  model, which is why it does not decide.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from ncf.data import features as F
from ncf.data import layout
from ncf.data.user_state import UserStates
from ncf.evaluate.baselines import ALSRanker, OwnFrequencyRanker, PopularityRanker, Ranker, top_k
from ncf.evaluate.metrics import ranking_metrics
from ncf.splits import TEST, VAL

K = 10
MRR_DEPTH = 100
SAMPLED_NEGATIVES = 99

RankFn = Callable[[int, int, int], np.ndarray]  # (user, at, depth) -> product indices
ScoreFn = Callable[[int, int, np.ndarray], np.ndarray]  # (user, at, products) -> scores


@dataclass
class Period:
    """A held-out period: its start and each user's purchases in it."""

    name: str
    start: int
    truth: Dict[int, np.ndarray]  # user -> distinct known products bought in the period
    first_purchase: Dict[int, int]  # user -> first product bought in the period
    first_visit: Dict[int, int]  # user -> epoch seconds of their first basket in the period

    @property
    def users(self) -> np.ndarray:
        return np.array(sorted(self.truth), dtype=np.int64)


def load_period(data: str, split: str, boundaries: Dict[str, int]) -> Period:
    if split not in (VAL, TEST):
        raise ValueError(f"split must be {VAL} or {TEST}")
    table = pads.dataset(layout.examples_dir(data, split), format="parquet").to_table(
        columns=[F.USER, F.PRODUCT, "ts", F.LABEL]
    )
    frame = table.to_pandas()
    frame = frame[(frame[F.LABEL] == 1) & (frame[F.USER] > 0) & (frame[F.PRODUCT] > 0)]
    frame = frame.sort_values(["ts", F.PRODUCT], kind="stable")
    truth = {int(u): np.unique(g[F.PRODUCT].to_numpy()) for u, g in frame.groupby(F.USER)}
    first = frame.groupby(F.USER)[[F.PRODUCT, "ts"]].first()
    start = boundaries["val_start"] if split == VAL else boundaries["test_start"]
    return Period(
        split,
        start,
        truth,
        {int(u): int(p) for u, p in first[F.PRODUCT].items()},
        {int(u): int(t) for u, t in first["ts"].items()},
    )


def sample_users(users: np.ndarray, max_users: Optional[int], seed: int = 0) -> np.ndarray:
    if max_users is None or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def full_ranking(rank: RankFn, period: Period, users: np.ndarray) -> Dict[str, float]:
    rows = [
        ranking_metrics(rank(int(u), period.first_visit[int(u)], MRR_DEPTH), period.truth[int(u)], K) for u in users
    ]
    means = pd.DataFrame(rows).mean()
    return {f"recall@{K}": means["recall"], f"ndcg@{K}": means["ndcg"], f"hr@{K}": means["hr"], "mrr": means["mrr"]}


def sampled_ranking(
    score: ScoreFn, period: Period, users: np.ndarray, states: UserStates, num_products: int, seed: int = 0
) -> Dict[str, float]:
    hits, ndcgs = [], []
    for u in users:
        u = int(u)
        rng = np.random.default_rng([seed, u])
        seen = np.union1d(states.timeline(u).products, period.truth[u])
        pool = np.setdiff1d(np.arange(1, num_products), seen, assume_unique=True)
        negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, len(pool)), replace=False)
        positive = period.first_purchase[u]
        s = score(u, period.first_visit[u], np.concatenate([[positive], negatives]))
        rank = int((s[1:] >= s[0]).sum())  # ties count against the positive
        hits.append(rank < K)
        ndcgs.append(1.0 / np.log2(rank + 2) if rank < K else 0.0)
    return {f"sampled_hr@{K}": float(np.mean(hits)), f"sampled_ndcg@{K}": float(np.mean(ndcgs))}


def ranker_fns(ranker: Ranker) -> tuple[RankFn, ScoreFn]:
    return (lambda u, at, depth: top_k(ranker.scores(u, at), depth)), (lambda u, at, p: ranker.scores(u, at)[p])


def recommender_fns(recommender) -> tuple[RankFn, ScoreFn]:
    rank = lambda u, at, depth: recommender.rank_indices(u, at, k=depth).products  # noqa: E731
    score = lambda u, at, p: recommender.score_indices(u, p, at)[0]  # noqa: E731
    return rank, score


def evaluate(
    name: str,
    rank: RankFn,
    score: Optional[ScoreFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    num_products: int = 0,
) -> Dict:
    started = time.time()
    row = {"model": name, "split": period.name, "users": int(len(users)), **full_ranking(rank, period, users)}
    if score is not None and states is not None:
        row.update(sampled_ranking(score, period, users, states, num_products))
    row["seconds"] = round(time.time() - started, 1)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def baselines(
    states: UserStates, popularity: np.ndarray, num_users: int, at: int, with_als: bool = True
) -> List[Ranker]:
    rankers: List[Ranker] = [PopularityRanker(popularity), OwnFrequencyRanker(states, popularity)]
    if with_als:
        rankers.append(ALSRanker(states, num_users, len(popularity), at))
    return rankers


def evaluate_all(
    recommender,
    data: str,
    split: str = TEST,
    max_users: Optional[int] = None,
    with_baselines: bool = True,
    with_als: bool = True,
) -> List[Dict]:
    """The model, then each baseline, on the same users of the same period."""
    with open(layout.stats_path(data)) as f:
        boundaries = json.load(f)["boundaries"]
    period = load_period(data, split, boundaries)
    users = sample_users(period.users, max_users)
    states, n = recommender.states, recommender.num_products
    rank, score = recommender_fns(recommender)
    rows = [evaluate("advanced_ncf", rank, score, period, users, states, n)]
    if with_baselines:
        for ranker in baselines(states, recommender.popularity, len(recommender.vocabs.users), period.start, with_als):
            r, s = ranker_fns(ranker)
            rows.append(evaluate(ranker.name, r, s, period, users, states, n))
    return rows
