"""Held-out evaluation of the model and the baselines, by the same code.

Two protocols:

* full ranking (the one that decides): every household with purchases in the period and
  before it gets the catalog known at the period's start ranked at the moment of its first
  visit in the period, from its purchases before that moment (the first visit is the first: none
  of the period's purchases are visible); relevant = the distinct products it bought in the
  period that were known at its start. Recall@10 (hits / min(10, relevant)), NDCG@10, HR@10 and
  MRR (first relevant item within the top 100).
* sampled (the NCF paper's, for comparison with the literature): each household's first
  purchase in the period against 99 products it never bought; HR@10 and NDCG@10. It flatters
  every model, which is why it does not decide.

Everything a model or baseline reads is as known at the period's start: histories strictly
before each moment, product popularity and cadence from purchases before the start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from ncf.data.user_state import UserStates
from ncf.data.vocab import FIRST_TS, Vocabularies
from ncf.evaluate.baselines import ALSRanker, OwnFrequencyRanker, PopularityRanker, Ranker, top_k
from ncf.evaluate.metrics import ranking_metrics
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.directory import ModelDir
from ncf.rank.candidates import RankingSettings
from ncf.rank.ranker import Ranker as ModelRanker
from ncf.rank.state import EmbeddingRows, RankingState
from ncf.splits import TEST, VAL

K = 10
MRR_DEPTH = 100
SAMPLED_NEGATIVES = 99

RankFn = Callable[[int, int, int], np.ndarray]  # (user, at, depth) -> product indices
RankManyFn = Callable[[np.ndarray, np.ndarray, int], List[np.ndarray]]  # (users, at, depth) -> lists
ScoreFn = Callable[[int, int, np.ndarray], np.ndarray]  # (user, at, products) -> scores


@dataclass
class Period:
    """A held-out period: its bounds and each household's purchases in it."""

    name: str
    start: int
    end: int
    truth: Dict[int, np.ndarray]  # household -> distinct products bought in the period, known at its start
    first_purchase: Dict[int, int]  # household -> its first such product
    first_visit: Dict[int, int]  # household -> epoch seconds of its first basket in the period

    @property
    def users(self) -> np.ndarray:
        return np.array(sorted(self.truth), dtype=np.int64)


def period_bounds(split: str, boundaries: Dict[str, int]) -> tuple[int, int]:
    if split == VAL:
        return boundaries["val_start"], boundaries["test_start"]
    if split == TEST:
        return boundaries["test_start"], boundaries["end"] + 1
    raise ValueError(f"split must be {VAL} or {TEST}")


def load_period(state: RankingState, split: str, boundaries: Dict[str, int]) -> Period:
    """The households of a period and what they bought in it, from the state's purchases."""
    start, end = period_bounds(split, boundaries)
    users, products, ts = state.states.all_purchases()
    known_users = np.unique(users[ts < start])
    first_seen = state.vocabs.products.column(FIRST_TS)
    inside = (ts >= start) & (ts < end) & np.isin(users, known_users)
    frame = pd.DataFrame({"user": users[inside], "product": products[inside], "ts": ts[inside]})
    first_visit = frame.groupby("user")["ts"].min()
    frame = frame[first_seen[frame["product"].to_numpy()] < start].sort_values(["ts", "product"], kind="stable")
    truth = {int(u): np.unique(g["product"].to_numpy()) for u, g in frame.groupby("user")}
    first = frame.groupby("user")["product"].first()
    return Period(
        split,
        int(start),
        int(end),
        truth,
        {int(u): int(p) for u, p in first.items()},
        {int(u): int(first_visit[u]) for u in truth},
    )


def sample_users(users: np.ndarray, max_users: Optional[int], seed: int = 0) -> np.ndarray:
    if max_users is None or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def full_ranking(rank_many: RankManyFn, period: Period, users: np.ndarray) -> Dict[str, float]:
    at = np.array([period.first_visit[int(u)] for u in users], np.int64)
    ranked = rank_many(users, at, MRR_DEPTH)
    rows = [ranking_metrics(r, period.truth[int(u)], K) for u, r in zip(users, ranked)]
    means = pd.DataFrame(rows).mean()
    return {f"recall@{K}": means["recall"], f"ndcg@{K}": means["ndcg"], f"hr@{K}": means["hr"], "mrr": means["mrr"]}


def sampled_ranking(
    score: ScoreFn, period: Period, users: np.ndarray, states: UserStates, known: np.ndarray, seed: int = 0
) -> Dict[str, float]:
    hits, ndcgs = [], []
    catalog = np.flatnonzero(known)
    for u in users:
        u = int(u)
        rng = np.random.default_rng([seed, u])
        seen = np.union1d(states.timeline(u).products, period.truth[u])
        pool = np.setdiff1d(catalog, seen, assume_unique=True)
        negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, len(pool)), replace=False)
        positive = period.first_purchase[u]
        s = score(u, period.first_visit[u], np.concatenate([[positive], negatives]))
        rank = int((s[1:] >= s[0]).sum())  # ties count against the positive
        hits.append(rank < K)
        ndcgs.append(1.0 / np.log2(rank + 2) if rank < K else 0.0)
    return {f"sampled_hr@{K}": float(np.mean(hits)), f"sampled_ndcg@{K}": float(np.mean(ndcgs))}


def ranker_fns(ranker: Ranker, known: np.ndarray) -> tuple[RankManyFn, ScoreFn]:
    """A baseline's ranking over the products known at the period's start, and its scores."""
    masked = np.where(known, 0.0, -np.inf)

    def rank_many(users, at, depth):
        return [top_k(ranker.scores(int(u), int(a)) + masked, depth) for u, a in zip(users, at)]

    return rank_many, (lambda u, at, p: ranker.scores(u, at)[p])


def model_fns(ranker: ModelRanker) -> tuple[RankManyFn, ScoreFn]:
    """The model's ranking through the one ranking path, and its scores."""

    def rank_many(users, at, depth):
        return [r.products for r in ranker.rank(users, at, k=depth)]

    return rank_many, (lambda u, at, p: ranker.score(u, p, at)[0])


def period_ranker(
    model: AdvancedNCF,
    tables: Vocabularies,
    trained_through: int,
    data: str,
    start: int,
    settings: Optional[RankingSettings] = None,
) -> ModelRanker:
    """The model ranking ``data``'s households as known at ``start``."""
    state = RankingState.load(data).as_of(start)
    rows = EmbeddingRows.between(tables, state.vocabs, trained_through)
    return ModelRanker(model, state, rows, settings)


def evaluate(
    name: str,
    rank_many: RankManyFn,
    score: Optional[ScoreFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    known: Optional[np.ndarray] = None,
) -> Dict:
    started = time.time()
    row = {"model": name, "split": period.name, "users": int(len(users)), **full_ranking(rank_many, period, users)}
    if score is not None and states is not None:
        row.update(sampled_ranking(score, period, users, states, known))
    row["seconds"] = round(time.time() - started, 1)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def baselines(state: RankingState, at: int, with_als: bool = True) -> List[Ranker]:
    popularity = state.stats.lines
    rankers: List[Ranker] = [PopularityRanker(popularity), OwnFrequencyRanker(state.states, popularity)]
    if with_als:
        rankers.append(ALSRanker(state.states, state.states.num_users, state.num_products, at))
    return rankers


def model_on_period(model_dir: str, data: str, split: str) -> tuple[ModelRanker, Period]:
    """A model directory's model ranking ``data``'s ``split`` as known at its start, and the period."""
    handle = ModelDir(model_dir)
    boundaries = RankingState.boundaries(data)
    start, _ = period_bounds(split, boundaries)
    settings = RankingSettings(**handle.ranking)
    ranker = period_ranker(
        handle.load_model(), handle.table_vocabularies(), handle.trained_through, data, start, settings
    )
    return ranker, load_period(ranker.state, split, boundaries)


def evaluate_all(
    model_dir: str,
    data: str,
    split: str = TEST,
    max_users: Optional[int] = None,
    with_baselines: bool = True,
    with_als: bool = True,
    name: str = "advanced_ncf",
    on_period: Optional[tuple[ModelRanker, Period]] = None,
) -> List[Dict]:
    """The model, then each baseline, on the same households of the same period of ``data``
    (``on_period``: :func:`model_on_period`'s result, when the caller has it already)."""
    ranker, period = on_period or model_on_period(model_dir, data, split)
    state = ranker.state
    users = sample_users(period.users, max_users)
    known = ranker.candidates.known
    rank_many, score = model_fns(ranker)
    rows = [evaluate(name, rank_many, score, period, users, state.states, known)]
    if with_baselines:
        for baseline in baselines(state, period.start, with_als):
            r, s = ranker_fns(baseline, known)
            rows.append(evaluate(baseline.name, r, s, period, users, state.states, known))
    return rows
