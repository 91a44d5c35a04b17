"""The evaluation protocol: held-out periods, full ranking and the sampled protocol.

Two protocols, the same for the model and every baseline:

* full ranking (the one that decides): every household with purchases in the period and
  before it gets the catalog ranked at the moment of its first visit in the period, from its
  purchases before it (none of the period's purchases are visible: the first visit is the
  first); relevant = the distinct products it bought in the period. Point in time: for a
  period starting at S, the catalog (ranked and relevant) is the products first bought
  before S (:func:`ncf.data.catalog.catalog_before`) and the households are those with
  purchases before S. Recall@10 (hits / min(10, |relevant|)), recall_lit@10
  (hits / |relevant|, the literature's), NDCG@10, HR@10, MRR (first relevant item within the
  top 100), and, given the households' purchases, the repeat/explore split
  (:func:`ncf.evaluate.metrics.ranking_metrics`).
* sampled (the NCF paper's, for comparison with the literature): each household's first
  purchase in the period against 99 catalog products it never bought; HR@10 and NDCG@10. It
  flatters every model, which is why it does not decide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from ncf.data import features as F
from ncf.data import layout
from ncf.data.user_state import UserStates
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
    truth: Dict[int, np.ndarray]  # user -> distinct catalog products bought in the period
    first_purchase: Dict[int, int]  # user -> first catalog product bought in the period
    first_visit: Dict[int, int]  # user -> epoch seconds of their first basket in the period

    @property
    def users(self) -> np.ndarray:
        return np.array(sorted(self.truth), dtype=np.int64)


def period_start(split: str, boundaries: Dict[str, int]) -> int:
    if split not in (VAL, TEST):
        raise ValueError(f"split must be {VAL} or {TEST}")
    return int(boundaries["val_start"] if split == VAL else boundaries["test_start"])


def load_period(
    data: str,
    split: str,
    boundaries: Dict[str, int],
    catalog: Optional[np.ndarray] = None,
    households: Optional[np.ndarray] = None,
) -> Period:
    """The period's purchases from preprocessing's examples of ``split``.

    ``catalog`` (bool per product index) keeps only those products (relevant items and the
    first purchase); ``households`` (user indices) keeps only those users: see
    :func:`ncf.data.catalog.catalog_before` and ``households_before`` for the point-in-time ones.
    """
    start = period_start(split, boundaries)
    table = pads.dataset(layout.examples_dir(data, split), format="parquet").to_table(
        columns=[F.USER, F.PRODUCT, "ts", F.LABEL]
    )
    frame = table.to_pandas()
    frame = frame[(frame[F.LABEL] == 1) & (frame[F.USER] > 0) & (frame[F.PRODUCT] > 0)]
    if catalog is not None:
        products = frame[F.PRODUCT].to_numpy()
        frame = frame[(products < len(catalog)) & catalog[np.minimum(products, len(catalog) - 1)]]
    if households is not None:
        frame = frame[frame[F.USER].isin(households)]
    frame = frame.sort_values(["ts", F.PRODUCT], kind="stable")
    truth = {int(u): np.unique(g[F.PRODUCT].to_numpy()) for u, g in frame.groupby(F.USER)}
    first = frame.groupby(F.USER)[[F.PRODUCT, "ts"]].first()
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


def full_ranking(
    rank: RankFn, period: Period, users: np.ndarray, states: Optional[UserStates] = None
) -> Dict[str, float]:
    """Mean metrics over ``users``; with ``states``, also the repeat/explore split (products
    each user bought before its moment are read from its purchases)."""
    rows = []
    for u in users:
        u = int(u)
        at = period.first_visit[u]
        bought = None
        if states is not None:
            timeline = states.timeline(u)
            bought = timeline.first_products[: int(timeline.distinct_before(np.array([at]))[0])]
        rows.append(ranking_metrics(rank(u, at, MRR_DEPTH), period.truth[u], K, bought))
    means = pd.DataFrame(rows).mean()  # NaN (no repeat or no explore item) is skipped
    names = {"recall": f"recall@{K}", "ndcg": f"ndcg@{K}", "hr": f"hr@{K}", "mrr": "mrr"}
    names["recall_lit"] = f"recall_lit@{K}"
    for kind in ("repeat", "explore"):
        names.update({f"{kind}_hits": f"{kind}_hits@{K}", f"{kind}_recall": f"{kind}_recall@{K}"})
    names["repeat_share"] = f"repeat_share@{K}"
    return {names[m]: float(means[m]) for m in names if m in means}


def sampled_ranking(
    score: ScoreFn,
    period: Period,
    users: np.ndarray,
    states: UserStates,
    num_products: int,
    seed: int = 0,
    catalog: Optional[np.ndarray] = None,
) -> Dict[str, float]:
    hits, ndcgs = [], []
    products = np.arange(1, num_products) if catalog is None else np.flatnonzero(catalog)
    for u in users:
        u = int(u)
        rng = np.random.default_rng([seed, u])
        seen = np.union1d(states.timeline(u).products, period.truth[u])
        pool = np.setdiff1d(products, seen, assume_unique=True)
        negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, len(pool)), replace=False)
        positive = period.first_purchase[u]
        s = score(u, period.first_visit[u], np.concatenate([[positive], negatives]))
        rank = int((s[1:] >= s[0]).sum())  # ties count against the positive
        hits.append(rank < K)
        ndcgs.append(1.0 / np.log2(rank + 2) if rank < K else 0.0)
    return {f"sampled_hr@{K}": float(np.mean(hits)), f"sampled_ndcg@{K}": float(np.mean(ndcgs))}


def ranker_fns(ranker) -> tuple[RankFn, ScoreFn]:
    """A baseline (:class:`ncf.evaluate.baselines.Ranker`) as the protocol's functions."""
    return ranker.rank, (lambda u, at, p: ranker.scores(u, at)[p])


def recommender_fns(recommender) -> tuple[RankFn, ScoreFn]:
    rank = lambda u, at, depth: recommender.rank_indices(u, at, k=depth).products  # noqa: E731
    score = lambda u, at, p: recommender.score_indices(u, p, at)[0]  # noqa: E731
    return rank, score


def within_catalog(rank: RankFn, catalog: np.ndarray) -> RankFn:
    """``rank`` with products outside ``catalog`` dropped (asking for more as needed), for
    rankers that know a larger catalog than the period's (a model whose vocabulary runs
    through the data's end)."""
    if catalog[1:].all():
        return rank

    def ranked(user: int, at: int, depth: int) -> np.ndarray:
        want = depth
        while True:
            products = np.asarray(rank(user, at, want))
            kept = products[catalog[products]]
            if len(kept) >= depth or len(products) < want:
                return kept[:depth]
            want *= 2

    return ranked


def evaluate(
    name: str,
    rank: RankFn,
    score: Optional[ScoreFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    num_products: int = 0,
    catalog: Optional[np.ndarray] = None,
) -> Dict:
    """One result row: full ranking (with the repeat/explore split when ``states`` are given)
    and, with ``score``, the sampled protocol."""
    started = time.time()
    row = {"model": name, "split": period.name, "users": int(len(users)), **full_ranking(rank, period, users, states)}
    if score is not None and states is not None:
        row.update(sampled_ranking(score, period, users, states, num_products, catalog=catalog))
    row["seconds"] = round(time.time() - started, 1)
    return {k: _rounded(v) for k, v in row.items()}


def _rounded(value):
    """Floats to 4 decimals; NaN (e.g. no user with an explore item) to None, valid in JSON."""
    if not isinstance(value, float):
        return value
    return None if np.isnan(value) else round(value, 4)
