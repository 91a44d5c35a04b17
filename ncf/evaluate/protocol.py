"""The evaluation protocol: held-out periods, full ranking and the sampled protocol.

Two protocols, the same for the model and every baseline:

* full ranking (the one that decides): every household with purchases in the period and
  before it gets the catalog ranked at the moment of its first visit in the period, from its
  purchases before it (none of the period's purchases are visible: the first visit is the
  first); relevant = the distinct products it bought in the period. Point in time: for a
  period starting at S, the catalog (ranked and relevant) is the products first bought
  before S (:func:`ncf.data.catalog.catalog_before`) and the households are those with
  purchases before S. Recall@10 (hits / min(10, |relevant|)), recall_lit@10
  (hits / |relevant|), NDCG@10, HR@10, MRR (first relevant item within the top 100), the next
  basket's recall and NDCG@10 (relevant = its first catalog basket in the period: the protocol
  of the next-basket literature), given the households' purchases the repeat/explore split
  (:func:`ncf.evaluate.metrics.ranking_metrics`), and for a two-stage scorer its first stage's
  coverage of the relevant products.
* sampled (the NCF paper's, for comparison with the literature): a product drawn (seeded per
  household) from each household's first catalog basket in the period against 99 catalog
  products it had not bought by the period's end;
  HR@10 and NDCG@10. It
  flatters every model, which is why it does not decide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd

from ncf.data.timeline import run_starts
from ncf.data.user_state import UserStates
from ncf.evaluate.metrics import paired_difference, ranking_metrics
from ncf.rank.ranker import Ranking
from ncf.splits import TEST, VAL

K = 10
MRR_DEPTH = 100
BOUGHT_BEFORE = "bought_before"
SAMPLED_NEGATIVES = 99
# Households ranked per call of a ranking: their lists (and candidates) are held together.
EVALUATION_CHUNK = 4096
# How often a ranking of many households says how far it is (a validation with --val-users 0,
# or the test weeks, at 10M households: hours).
PROGRESS_EVERY_S = 60.0
PAIRED = (f"recall@{K}", f"ndcg@{K}")  # the metrics a baseline's row compares with the model's, household by household

RankFn = Callable[[int, int, int], np.ndarray]  # (user, at, depth) -> product indices
RankManyFn = Callable[[np.ndarray, np.ndarray, int], List[np.ndarray]]  # (users, at, depth) -> lists
# (users, at) -> each household's first-stage candidates: what a two-stage scorer reranks.
FirstStageFn = Callable[[np.ndarray, np.ndarray], List[np.ndarray]]
ScoreFn = Callable[[int, int, np.ndarray], np.ndarray]  # (user, at, products) -> scores


@dataclass
class Period:
    """A held-out period: its bounds and each household's purchases in it."""

    name: str
    start: int
    truth: Dict[int, np.ndarray]  # user -> distinct catalog products bought in the period
    # user -> the products of its first basket in the period that holds any relevant product
    # (sorted): a catalog product, and with exclude_purchased one new to the household; a first
    # visit of only other products leaves it to a later basket, ranked at the first visit all
    # the same. The sampled protocol's positive is drawn from them (products share their
    # basket's timestamp, and the lowest index of a basket is its most popular product).
    first_basket: Dict[int, np.ndarray]
    first_visit: Dict[int, int]  # user -> epoch seconds of their first basket in the period
    end: int = 0  # exclusive
    # With exclude_purchased: households left out because they bought in the period only
    # products they had bought before (nothing a ranking without those products could find).
    only_rebought: Optional[int] = None
    # Households left out because every product they bought in the period is outside the catalog
    # (first bought at or after its start: no ranking of the catalog could find it).
    only_new_products: int = 0
    # Households that bought in the period and never before it (outside ``households``: nothing to
    # rank them from, by the protocol's definition): left out and counted.
    without_history: int = 0

    @property
    def users(self) -> np.ndarray:
        return np.array(sorted(self.truth), dtype=np.int64)


def period_start(split: str, boundaries: Dict[str, int]) -> int:
    return period_bounds(split, boundaries)[0]


def period_bounds(split: str, boundaries: Dict[str, int]) -> tuple[int, int]:
    """[start, end) of the validation or test period (the test period ends with the data)."""
    if split == VAL:
        return int(boundaries["val_start"]), int(boundaries["test_start"])
    if split == TEST:
        return int(boundaries["test_start"]), int(boundaries["end"]) + 1
    raise ValueError(f"split must be {VAL} or {TEST}")


def load_period(
    states: UserStates,
    split: str,
    boundaries: Dict[str, int],
    catalog: Optional[np.ndarray] = None,
    households: Optional[np.ndarray] = None,
    exclude_purchased: bool = False,
) -> Period:
    """The period's purchases, from the households' purchases (the state).

    The first visit is a household's first basket in the period, whatever it bought.
    ``catalog`` (bool per product index) keeps only those products (relevant items and the
    first basket); ``households`` (user indices) keeps only those users: see
    :func:`ncf.data.catalog.catalog_before` and ``households_before`` for the point-in-time ones.
    ``exclude_purchased``: the rankings leave out what each household bought before its first
    visit, so those products are not relevant either (nor in the first basket); households with
    nothing else are left out and counted (``only_rebought``). Households whose purchases in the
    period are all outside ``catalog`` are left out and counted too (``only_new_products``), and so
    are households outside ``households`` that bought in the period (``without_history``).
    """
    start, end = period_bounds(split, boundaries)
    frame, without_history = _period_rows(states, start, end, households, exclude_purchased)
    first_visit = frame.groupby("user")["ts"].min()
    if catalog is not None:
        product = frame["product"].to_numpy()
        frame = frame[(product < len(catalog)) & catalog[np.minimum(product, len(catalog) - 1)]]
    frame = frame[frame["product"] > 0].sort_values(["ts", "product"], kind="stable")
    only_new_products = int(len(first_visit) - frame["user"].nunique())
    only_rebought = None
    if exclude_purchased:
        buyers = frame["user"].nunique()
        frame = frame[~frame[BOUGHT_BEFORE].to_numpy(bool)]
        only_rebought = int(buyers - frame["user"].nunique())
    # One pass over the rows by household (sorted by time within one: its first rows are its
    # first basket): the distinct products, and those of the first basket.
    by_user = frame.sort_values(["user", "ts"], kind="stable")
    users, products, ts = (by_user[c].to_numpy() for c in ("user", "product", "ts"))
    starts = run_starts(users)
    truth, first_basket = {}, {}
    for begin, stop in zip(starts, np.append(starts[1:], len(users))):
        u, bought = int(users[begin]), products[begin:stop]
        truth[u], first_basket[u] = np.unique(bought), np.unique(bought[ts[begin:stop] == ts[begin]])
    return Period(
        split,
        start,
        truth,
        first_basket,
        {int(u): int(first_visit[u]) for u in truth},
        end,
        only_rebought,
        only_new_products,
        without_history,
    )


def _period_rows(
    states: UserStates, start: int, end: int, households: Optional[np.ndarray], bought_before: bool
) -> tuple[pd.DataFrame, int]:
    """(user, product, ts) of the purchases in [start, end) of ``households`` (all when None),
    in the state's order; with ``bought_before``, also whether the household had bought that
    product before its first visit of the period; and how many other households bought in it.
    Read a chunk of whole households at a time: the period is a few weeks of a log that may hold
    a billion purchases."""
    member = None
    if households is not None:
        member = np.zeros(states.num_users, bool)
        member[households[(households >= 0) & (households < states.num_users)]] = True
    frames, others = [], 0
    for users, products, ts in states.chunks():
        inside = (ts >= start) & (ts < end) & (users > 0)
        if member is not None:
            known = member[users]
            others += len(np.unique(users[inside & ~known]))  # a chunk holds whole households
            inside &= known
        frame = pd.DataFrame({"user": users[inside], "product": products[inside], "ts": ts[inside]})
        if bought_before:
            # A chunk holds whole households: everything each bought before its first visit.
            first_visit = frame.groupby("user")["ts"].min()
            frame[BOUGHT_BEFORE] = _bought_before(frame, first_visit, users, products, ts)
        frames.append(frame)
    if not frames:
        columns = {"user": np.zeros(0, np.int64), "product": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64)}
        return pd.DataFrame({**columns, **({BOUGHT_BEFORE: np.zeros(0, bool)} if bought_before else {})}), others
    return pd.concat(frames, ignore_index=True), others


def _bought_before(
    frame: pd.DataFrame, first_visit: pd.Series, users: np.ndarray, products: np.ndarray, ts: np.ndarray
) -> np.ndarray:
    """True for the rows of ``frame`` whose household bought that product before its first visit
    (``users``, ``products``, ``ts``: the purchases of those households, any others too)."""
    if len(frame) == 0:
        return np.zeros(0, bool)
    low = int(users.min())  # the chunk's households only: not an array from household 0 per chunk
    moment = np.full(int(users.max(initial=0)) - low + 1, np.iinfo(np.int64).min)
    moment[first_visit.index.to_numpy() - low] = first_visit.to_numpy()
    earlier = ts < moment[users - low]
    width = np.int64(products.max(initial=0) + 1)
    pairs = frame["user"].to_numpy(np.int64) * width + frame["product"].to_numpy(np.int64)
    return np.isin(pairs, users[earlier] * width + products[earlier])


def sample_users(users: np.ndarray, max_users: Optional[int], seed: int = 0) -> np.ndarray:
    if max_users is None or len(users) <= max_users:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def each(rank: RankFn) -> RankManyFn:
    """A ranking of one household at a time as a ranking of many."""
    return lambda users, at, depth: [rank(int(u), int(a), depth) for u, a in zip(users, at)]


def full_ranking(
    rank: Optional[RankFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    rank_many: Optional[RankManyFn] = None,
    first_stage: Optional[FirstStageFn] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, float]:
    """Mean metrics over ``users``, ranked one by one (``rank``) or many at a time (``rank_many``,
    the model's batched ranking path); with ``states``, also the repeat/explore split (products
    each user bought before its moment are read from its purchases); with ``first_stage``, a
    two-stage scorer's candidates, their coverage of the relevant products. ``progress``: told
    how far the ranking is every :data:`PROGRESS_EVERY_S`."""
    households = per_user_ranking(rank, period, users, states, rank_many, first_stage, progress)
    means = households.mean()  # NaN (no repeat/explore item) skipped
    return {name: float(means[name]) for name in means.index}


def per_user_ranking(
    rank: Optional[RankFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    rank_many: Optional[RankManyFn] = None,
    first_stage: Optional[FirstStageFn] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> pd.DataFrame:
    """:func:`full_ranking`'s metrics for each of ``users`` (a row each, in ``users``' order;
    columns named as :func:`full_ranking` names them), for comparisons paired by household.

    Beside the period's metrics, the next basket's (the literature's protocol: relevant = the
    products of the household's first basket in the period that holds catalog products,
    :attr:`Period.first_basket`): ``next_basket_recall@10`` (hits / |basket|) and
    ``next_basket_ndcg@10``. With ``first_stage``: ``first_stage_recall``, the share of the
    relevant products among the candidates (no reranking of them finds more: it bounds
    ``recall_lit@10``, not ``recall@10``, whose denominator is at most 10), and
    ``first_stage_candidates``, how many there were. A ranking's lists may be the model's
    :class:`ncf.rank.ranker.Ranking` objects, whose candidates come with them."""
    users = np.asarray(users, np.int64)
    at = np.array([period.first_visit[int(u)] for u in users], np.int64)
    rows = []
    started = said = time.monotonic()
    for start in range(0, len(users), EVALUATION_CHUNK):
        chunk = slice(start, start + EVALUATION_CHUNK)
        rows += _household_metrics(rank, period, users[chunk], at[chunk], states, rank_many, first_stage)
        now = time.monotonic()
        if progress is not None and now - said >= PROGRESS_EVERY_S and len(rows) < len(users):
            said, rate = now, len(rows) / (now - started)
            left = (len(users) - len(rows)) / rate
            progress(f"ranked {len(rows):,} of {len(users):,} households ({rate:,.0f}/s, about {left:,.0f} s left)")
    frame = pd.DataFrame(rows, index=pd.Index(users, name="user"))
    return frame[[m for m in _METRIC_NAMES if m in frame.columns]].rename(columns=_METRIC_NAMES)


def _household_metrics(
    rank: Optional[RankFn],
    period: Period,
    users: np.ndarray,
    at: np.ndarray,
    states: Optional[UserStates],
    rank_many: Optional[RankManyFn],
    first_stage: Optional[FirstStageFn],
) -> List[Dict[str, float]]:
    """:func:`per_user_ranking`'s rows of some of its households: ranked (and their candidates
    held) a chunk at a time, not a period of millions at once."""
    ranked = (rank_many or each(rank))(users, at, MRR_DEPTH)
    candidates = first_stage(users, at) if first_stage is not None else [None] * len(users)
    rows = []
    for u, a, products, listed in zip(users.tolist(), at.tolist(), ranked, candidates):
        if isinstance(products, Ranking):  # the model's (model_two_stage): its candidates come with it
            products, listed = products.products, products.candidates
        bought = None if states is None else np.unique(states.timeline(u).products_before(a))
        metrics = ranking_metrics(products, period.truth[u], K, bought)
        basket = ranking_metrics(products, period.first_basket[u], K)
        metrics.update(next_basket_recall=basket["recall_lit"], next_basket_ndcg=basket["ndcg"])
        if listed is not None:
            metrics.update(
                first_stage_recall=float(np.isin(period.truth[u], listed).mean()),
                first_stage_candidates=float(len(listed)),
            )
        rows.append(metrics)
    return rows


_METRIC_NAMES = {
    "recall": f"recall@{K}",
    "ndcg": f"ndcg@{K}",
    "hr": f"hr@{K}",
    "mrr_at_k": f"mrr@{K}",
    "mrr": "mrr",
    "recall_lit": f"recall_lit@{K}",
    **{f"{kind}_{m}": f"{kind}_{m}@{K}" for kind in ("repeat", "explore") for m in ("hits", "recall")},
    "repeat_share": f"repeat_share@{K}",
    "next_basket_recall": f"next_basket_recall@{K}",
    "next_basket_ndcg": f"next_basket_ndcg@{K}",
    "first_stage_recall": "first_stage_recall",
    "first_stage_candidates": "first_stage_candidates",
}


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
        pool = _NeverBought(products, bought_by_period_end(states, period, u))
        # The same draws as rng.choice(setdiff1d(products, seen), ...): choice draws positions.
        negatives = pool.take(rng.choice(len(pool), size=min(SAMPLED_NEGATIVES, len(pool)), replace=False))
        positive = int(rng.choice(period.first_basket[u]))  # after the negatives: theirs are the draws as before
        s = score(u, period.first_visit[u], np.concatenate([[positive], negatives]))
        # Ties count against the positive, and so does a NaN among the negatives; a NaN positive is
        # a miss (a diverged model's NaN passed every comparison as a hit). +inf and -inf compare as
        # any score does: above or below every finite negative, tied with their equals.
        rank = int((~(s[1:] < s[0])).sum()) if not np.isnan(s[0]) else len(s)
        hits.append(rank < K)
        ndcgs.append(1.0 / np.log2(rank + 2) if rank < K else 0.0)
    return {f"sampled_hr@{K}": float(np.mean(hits)), f"sampled_ndcg@{K}": float(np.mean(ndcgs))}


def bought_by_period_end(states: UserStates, period: Period, user: int) -> np.ndarray:
    """The distinct products ``user`` bought before ``period`` and its catalog products bought in
    it: what a ranking's "never bought" pool leaves out. Not what it bought after the period (the
    whole log's): a validation period's pool would leave out what the household buys in the test
    weeks, a future it could not know."""
    return np.union1d(states.timeline(user).products_before(period.start), period.truth[user])


class _NeverBought:
    """``np.setdiff1d(products, seen)`` (both sorted) without building it: its length and the
    entries at given positions, in O(|seen|) instead of O(products) per household (a catalog of
    1M products cost 10 ms a household)."""

    def __init__(self, products: np.ndarray, seen: np.ndarray) -> None:
        position = np.searchsorted(products, seen)
        inside = position < len(products)
        excluded = np.unique(position[inside][products[position[inside]] == seen[inside]])
        self.products = products
        # excluded[i] - i: how many kept products come before the i-th excluded one.
        self._kept_before = excluded - np.arange(len(excluded))
        self._length = len(products) - len(excluded)

    def __len__(self) -> int:
        return self._length

    def take(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        return self.products[indices + np.searchsorted(self._kept_before, indices, side="right")]


def ranker_fns(ranker) -> tuple[RankFn, ScoreFn]:
    """A baseline (:class:`ncf.evaluate.baselines.Ranker`) as the protocol's functions."""
    if not hasattr(ranker, "scores"):  # rankers of their candidates only: no sampled protocol
        return ranker.rank, None
    return ranker.rank, ranker.scores


def first_stage_fn(ranker) -> Optional[FirstStageFn]:
    """A two-stage baseline's candidates (its ``first_stage_candidates``); None for one that ranks the catalog."""
    return getattr(ranker, "first_stage_candidates", None)


def excluding_purchased(rank: RankFn, states: UserStates) -> RankFn:
    """``rank`` without the products the household bought before the moment (asked for as many
    more as it bought, so ``depth`` products still come back)."""

    def ranked(user: int, at: int, depth: int) -> np.ndarray:
        bought = np.unique(states.timeline(user).products_before(at))
        products = np.asarray(rank(user, at, depth + len(bought)))
        return products[~np.isin(products, bought)][:depth]

    return ranked


def model_fns(ranker, exclude_purchased: bool = False) -> tuple[RankManyFn, ScoreFn]:
    """The model's ranking through the one ranking path (many households per call; its
    candidates are the products known at the state's cutoff), and its scores."""

    def rank_many(users, at, depth):
        return [r.products for r in ranker.rank(users, at, k=depth, exclude_purchased=exclude_purchased)]

    # Logits, like the ranking: ties count against the positive, and saturated probabilities tie.
    return rank_many, (lambda u, at, p: ranker.score(u, p, at, logits=True)[0])


def model_two_stage(ranker, exclude_purchased: bool = False) -> RankManyFn:
    """:func:`model_fns`' ranking as the model's :class:`ncf.rank.ranker.Ranking` objects, each with
    the candidates its first stage drew (their coverage is reported without a second first stage)."""
    return lambda users, at, depth: ranker.rank(
        users, at, k=depth, exclude_purchased=exclude_purchased, keep_candidates=True
    )


def evaluate(*args, **kwargs) -> Dict:
    """:func:`evaluate_households`' row alone (the same arguments)."""
    return evaluate_households(*args, **kwargs)[0]


def evaluate_households(
    name: str,
    rank: Optional[RankFn],
    score: Optional[ScoreFn],
    period: Period,
    users: np.ndarray,
    states: Optional[UserStates] = None,
    num_products: int = 0,
    catalog: Optional[np.ndarray] = None,
    rank_many: Optional[RankManyFn] = None,
    against: Optional[pd.DataFrame] = None,
    first_stage: Optional[FirstStageFn] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> tuple[Dict, pd.DataFrame]:
    """One result row: full ranking (with the repeat/explore split when ``states`` are given,
    the first stage's coverage with ``first_stage``) and, with ``score``, the sampled protocol;
    and the per-household metrics it averages.
    ``against``: another scorer's :func:`per_user_ranking` of the same households (the model's),
    to which the row adds ``recall@10_minus_model`` / ``ndcg@10_minus_model`` and their paired
    standard errors. ``progress``: see :func:`full_ranking`."""
    started = time.time()
    households = per_user_ranking(rank, period, users, states, rank_many, first_stage, progress)
    means = households.mean()  # NaN (no repeat/explore item) skipped
    row = {"model": name, "split": period.name, "users": int(len(users)), **{m: float(means[m]) for m in means.index}}
    if against is not None and len(users) > 0:
        if not against.index.equals(households.index):
            raise ValueError("against holds other households than the ones ranked: a paired difference needs the same")
        for metric in PAIRED:
            difference, se = paired_difference(households[metric].to_numpy(), against[metric].to_numpy())
            row.update({f"{metric}_minus_model": difference, f"{metric}_minus_model_se": se})
    if period.only_rebought is not None:
        # The period's households left to rank (with only_rebought, the period's), beside "users"
        # (the households ranked, a sample with max_users).
        row["period_users"] = int(len(period.users))
        row["period_users_only_rebought"] = period.only_rebought
    if period.only_new_products:
        row["period_users_only_new_products"] = period.only_new_products
    if period.without_history:
        row["period_users_without_history"] = period.without_history
    if score is not None and states is not None:
        row.update(sampled_ranking(score, period, users, states, num_products, catalog=catalog))
    row["seconds"] = round(time.time() - started, 1)
    return {k: _rounded(v) for k, v in row.items()}, households


def _rounded(value):
    """Floats to 4 decimals; NaN (e.g. no user with an explore item) to None, valid in JSON."""
    if not isinstance(value, float):
        return value
    return None if np.isnan(value) else round(value, 4)
