"""The scoring core shared by evaluation, Ray Serve and the nightly batch job.

Ranking is two-stage so that its cost grows slowly with the catalog:

1. candidates: the user's own past purchases (most bought first), the best products by the
   MF path's score (one matrix product over the catalog) and the most popular products;
2. the full AdvancedNCF re-ranks the candidates, with the user side computed once and the
   product side cached for the whole catalog.

The MF path's top products depend on the user alone, not on the moment, so each user's list
is computed once and kept (:meth:`Recommender.warm_first_stage` computes them all: Serve does
it when it loads a model); a request then pays only for its own purchases and the re-ranking.

``RankingSettings.candidates`` sets the trade-off; :meth:`Recommender.rank_indices` with
``brute_force=True`` scores every product with the full model (to measure agreement).

Unknown users get a cold-start ranking: the most bought products at that hour of the day.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ncf.data.user_state import UserStates
from ncf.data.vocab import UNKNOWN_INDEX, Vocabularies
from ncf.model.advanced_ncf import AdvancedNCF
from ncf.model.directory import load_model, read_config
from ncf.moments import TIME_PARTS, time_parts_of, to_epoch_seconds

FIRST_STAGE_CACHE_MAX_ENTRIES = 50_000_000  # 200 MB of int32: 333k users at 150 each


@dataclass
class RankingSettings:
    """Two-stage ranking sizes."""

    candidates: int = 300  # re-ranked by the full model (BENCHMARKS: as close to brute force as 400)
    mf_candidates: int = 150  # from the MF path's dot products
    popular_candidates: int = 50


@dataclass
class Ranking:
    """Top products (indices) for one user, best first, with their scores."""

    products: np.ndarray
    scores: np.ndarray
    cold_start: bool
    # For each ranked product: (history product indices, attention weights), when explained.
    explanations: Optional[List[List[tuple]]] = None


class Recommender:
    """Ranks products for users with an AdvancedNCF model.

    Args:
        model: the trained model (switched to eval mode).
        vocabs: the dataset's vocabularies.
        states: users' purchase sequences.
        data_end: epoch seconds where the known purchases end; the default ``at``.
        version: the model version reported with every answer.

    Example::

        rec = Recommender.load("artifacts/model")
        rec.recommend([1364], k=5)  # [[raw product ids]]
        rec.score(1364, [1082185, 6534178])  # [probabilities]
    """

    def __init__(
        self,
        model: AdvancedNCF,
        vocabs: Vocabularies,
        states: UserStates,
        data_end: int,
        version: str = "dev",
        settings: Optional[RankingSettings] = None,
    ) -> None:
        self.model = model.eval()
        self.vocabs = vocabs
        self.states = states
        self.data_end = int(data_end)
        self.version = version
        self.settings = settings or RankingSettings()
        self.device = next(model.parameters()).device
        self.num_products = len(vocabs.products)
        self.popularity = vocabs.products.column("train_count").astype(np.float64)
        self._all_products = torch.arange(self.num_products, device=self.device)
        with torch.no_grad():
            dept = torch.as_tensor(vocabs.products.column("department_index"), device=self.device)
            cat = torch.as_tensor(vocabs.products.column("category_index"), device=self.device)
            self._catalog = model.encode_products(self._all_products, dept, cat)
            # The MF logit is mf_output(u * p): folding its weights into u makes stage one a matmul.
            self._mf_items = self._catalog.product_mf if model.config.use_mf else None
            self._mf_weights = model.mf_output.weight.detach()[0] if model.config.use_mf else None
        self._by_popularity = np.argsort(-self.popularity[1:], kind="stable") + 1
        self._popular = self._by_popularity[: self.settings.popular_candidates]
        self._popular_by_hour = self._hourly_popularity(states)
        # Each user's first-stage list, once computed (see _first_stage); kept while the whole
        # table stays small (FIRST_STAGE_CACHE_MAX_ENTRIES product indices).
        cacheable = model.config.use_mf and model.config.num_users * self._mf_width <= FIRST_STAGE_CACHE_MAX_ENTRIES
        self._mf_top = np.zeros((model.config.num_users, self._mf_width), np.int32) if cacheable else None
        self._mf_top_known = np.zeros(model.config.num_users, bool) if cacheable else None

    @staticmethod
    def load(
        model_dir: str, settings: Optional[RankingSettings] = None, device: Optional[torch.device] = None
    ) -> "Recommender":
        config = read_config(model_dir)
        return Recommender(
            load_model(model_dir, device),
            Vocabularies.load(os.path.join(model_dir, "vocab")),
            UserStates.load(os.path.join(model_dir, "user_state")),
            data_end=config["data"]["boundaries"]["test_start"],
            version=config["version"],
            settings=settings or RankingSettings(**config.get("ranking", {})),
        )

    # -- first stage and cold start ----------------------------------------------------------

    def _hourly_popularity(self, states: UserStates, top: int = 200) -> Dict[int, np.ndarray]:
        _, products, times = states.all_purchases()
        fallback = self._by_popularity[:top]
        by_hour = {}
        hours = time_parts_of(times)["hour"] if len(times) else np.zeros(0, np.int64)
        for hour in range(24):
            counts = np.bincount(products[hours == hour], minlength=self.num_products).astype(np.float64)
            counts[UNKNOWN_INDEX] = -1
            # Ties (and hours without purchases) fall back to overall popularity.
            order = np.lexsort((-self.popularity, -counts))
            by_hour[hour] = order[counts[order] > 0][:top] if counts.max() > 0 else fallback
            if len(by_hour[hour]) < top:
                by_hour[hour] = np.concatenate([by_hour[hour], fallback[~np.isin(fallback, by_hour[hour])]])[:top]
        return by_hour

    def _first_stage(self, users: np.ndarray, user_side) -> List[np.ndarray]:
        """The best ``mf_candidates`` products, best first, for each user (with its user side
        row): by the MF path's logit, or by popularity without it.

        The MF logit depends on the user alone, not on the moment, so each user's list is
        computed once and kept (:meth:`warm_first_stage` fills them all ahead of traffic).
        """
        s = self.settings
        if self._mf_items is None:
            return [self._by_popularity[: s.mf_candidates]] * len(users)
        if self._mf_top is None or self._mf_top.shape[1] != self._mf_width:
            return list(self._mf_top_of(user_side.user_mf))
        missing = np.flatnonzero(~self._mf_top_known[users])
        if len(missing):
            fresh = users[missing]
            self._mf_top[fresh] = self._mf_top_of(user_side.user_mf[torch.as_tensor(missing, device=self.device)])
            self._mf_top_known[fresh] = True
        return list(self._mf_top[users])

    @property
    def _mf_width(self) -> int:
        """How many products the MF first stage picks per user (the settings' count, at most the
        catalog without the unknown product)."""
        return min(self.settings.mf_candidates, self.num_products - 1)

    def _mf_top_of(self, user_mf: torch.Tensor) -> np.ndarray:
        """U x mf_dim user vectors -> U x mf_candidates best products by MF logit (one matrix
        product and one top-k for all U)."""
        scores = (user_mf * self._mf_weights) @ self._mf_items.T  # U x N
        scores[:, UNKNOWN_INDEX] = -torch.inf
        top = torch.topk(scores, self._mf_width, dim=1).indices
        return top.cpu().numpy()

    def warm_first_stage(self, chunk: int = 512) -> int:
        """Computes every known user's first-stage list now (serving does it on load, so that
        no request pays for it); returns how many users that took."""
        if self._mf_top is None:
            return 0
        users = self.states.users()
        users = users[~self._mf_top_known[users]]
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            side, _ = self._encode_users(
                part, np.full(len(part), self.data_end), [self.states.timeline(int(u)) for u in part]
            )
            self._first_stage(part, side)
        return len(users)

    def _candidates(self, bought: np.ndarray, first_stage: np.ndarray) -> np.ndarray:
        """Own purchases (most bought first), then the first stage's best, then the most
        popular: distinct, at most ``candidates``."""
        own, counts = np.unique(bought, return_counts=True)
        own = own[np.argsort(-counts, kind="stable")]
        merged = pd.unique(np.concatenate([own, first_stage, self._popular]))
        merged = merged[merged != UNKNOWN_INDEX]
        return merged[: self.settings.candidates]

    # -- index-level API -------------------------------------------------------------------------

    def _user_side(self, user: int, at: int):
        timeline = self.states.timeline(user)
        side, history = self._encode_users(np.array([user]), np.array([at]), [timeline])
        return timeline, side, history[0]

    def _encode_users(self, users: np.ndarray, at: np.ndarray, timelines: List) -> tuple:
        """The model's user side for U (user, moment) pairs in one call, and their U x L histories."""
        length = self.model.config.history_length
        pairs = [timeline.history(np.array([a]), length) for timeline, a in zip(timelines, at.tolist())]
        history = np.concatenate([h for h, _ in pairs])
        ages = np.concatenate([a for _, a in pairs])
        parts = time_parts_of(at)
        time_parts = np.stack([parts[k] for k in TIME_PARTS], axis=1)
        t = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        with torch.no_grad():
            side = self.model.encode_user(
                t(users, torch.long),
                t(time_parts, torch.long),
                t(history, torch.long),
                t(ages, torch.float32),
                table_lookup=True,
            )
        return side, history

    def score_indices(self, user: int, products: np.ndarray, at: int, need_weights: bool = False):
        """Full-model probabilities of ``products`` for a known user at ``at`` (and attention weights)."""
        timeline, side, history = self._user_side(user, at)
        return self._score(timeline, side, products, at, need_weights) + (history,)

    def _score(self, timeline, side, products: np.ndarray, at: int, need_weights: bool):
        count, days = timeline.repeat_stats(products, np.full(len(products), at))
        index = torch.as_tensor(products, dtype=torch.long, device=self.device)
        probs, weights = self.model.score_candidates(
            side,
            self._catalog.select(index),
            torch.as_tensor(count, dtype=torch.float32, device=self.device),
            torch.as_tensor(days, dtype=torch.float32, device=self.device),
            need_weights=need_weights,
        )
        return probs.cpu().numpy(), None if weights is None else weights.cpu().numpy()

    def rank_indices(
        self,
        user: int,
        at: Optional[int] = None,
        k: int = 10,
        exclude_purchased: bool = False,
        explain: bool = False,
        brute_force: bool = False,
        explain_top: int = 3,
    ) -> Ranking:
        """Top-``k`` product indices for a user index (0 or unknown: cold start)."""
        at = self.data_end if at is None else int(at)
        if user == UNKNOWN_INDEX or user not in self.states:
            hour = int(time_parts_of(np.array([at]))["hour"][0])
            top = self._popular_by_hour[hour][:k]
            return Ranking(top, self.popularity[top] / max(self.popularity.max(), 1.0), cold_start=True)
        timeline, side, history = self._user_side(user, at)
        bought = timeline.products_before(at)
        if brute_force:
            candidates = self._all_products.cpu().numpy()[1:]
        else:
            candidates = self._candidates(bought, self._first_stage(np.array([user]), side)[0])
        if exclude_purchased:
            candidates = candidates[~np.isin(candidates, bought)]
        probs, weights = self._score(timeline, side, candidates, at, explain)
        order = np.argsort(-probs, kind="stable")[:k]
        ranking = Ranking(candidates[order], probs[order], cold_start=False)
        if explain and weights is not None:
            ranking.explanations = [_top_history(history, weights[i], explain_top) for i in order]
        return ranking

    def rank_many(
        self, users: Sequence[int], at: Sequence[int], k: int = 10, exclude_purchased: bool = False
    ) -> List[Ranking]:
        """:meth:`rank_indices` for many (user index, moment) pairs: one user encoding and one
        full-model call over all their candidates, so that the per-call overheads are paid once
        per batch (Serve's request batches, the nightly job). Equal to ranking each pair alone."""
        users, at = np.asarray(users, np.int64), np.asarray(at, np.int64)
        rankings: List[Optional[Ranking]] = [None] * len(users)
        rows = [i for i, u in enumerate(users.tolist()) if u != UNKNOWN_INDEX and u in self.states]
        for i in sorted(set(range(len(users))) - set(rows)):
            rankings[i] = self.rank_indices(int(users[i]), int(at[i]), k)  # cold start: a lookup
        if not rows:
            return rankings
        timelines = [self.states.timeline(int(users[i])) for i in rows]
        side, _ = self._encode_users(users[rows], at[rows], timelines)
        first_stage = self._first_stage(users[rows], side)
        candidates = []
        for j, (i, timeline) in enumerate(zip(rows, timelines)):
            bought = timeline.products_before(int(at[i]))
            c = self._candidates(bought, first_stage[j])
            candidates.append(c[~np.isin(c, bought)] if exclude_purchased else c)
        # The model scores the same number C of candidates per user: shorter lists are padded
        # with the padding product, whose scores are dropped below.
        width = max(len(c) for c in candidates)
        padded = np.zeros((len(rows), width), np.int64)
        counts, days = np.zeros((len(rows), width)), np.zeros((len(rows), width))
        for j, (i, timeline, c) in enumerate(zip(rows, timelines, candidates)):
            padded[j, : len(c)] = c
            counts[j, : len(c)], days[j, : len(c)] = timeline.repeat_stats(c, np.full(len(c), at[i]))
        t = lambda a, dtype: torch.as_tensor(a.reshape(-1), dtype=dtype, device=self.device)  # noqa: E731
        probs, _ = self.model.score_candidates(
            side, self._catalog.select(t(padded, torch.long)), t(counts, torch.float32), t(days, torch.float32)
        )
        probs = probs.cpu().numpy().reshape(len(rows), width)
        for j, (i, c) in enumerate(zip(rows, candidates)):
            p = probs[j, : len(c)]
            order = np.argsort(-p, kind="stable")[:k]
            rankings[i] = Ranking(c[order], p[order], cold_start=False)
        return rankings

    # -- raw-id API (Serve and the nightly job) --------------------------------------------------

    def recommend(
        self, user_ids: Sequence, k: int = 10, at=None, exclude_purchased: bool = False, explain: bool = False
    ) -> List[List]:
        """Top-``k`` raw product ids for each raw user id; unknown users get the cold-start list.

        With ``explain=True`` each item is a dict instead: ``product_id``, ``score`` and
        ``because`` (the user's past purchases the attention weighted most, with the weights).
        """
        if explain:
            return [self.recommend_items(u, k, at, exclude_purchased, explain=True)["items"] for u in user_ids]
        at_s = None if at is None else to_epoch_seconds(at)
        users = self.vocabs.users.index_of(list(user_ids))
        return [
            self.vocabs.products.raw_of(self.rank_indices(int(u), at_s, k, exclude_purchased).products) for u in users
        ]

    def recommend_items(
        self, user_id, k: int = 10, at=None, exclude_purchased: bool = False, explain: bool = False
    ) -> Dict:
        """One user's ranking as plain data (what Serve and the nightly job emit)::

        {"user_id": .., "cold_start": bool, "items": [{"product_id": .., "score": ..,
         "because": [{"product_id": .., "weight": ..}]}]}   # "because" only with explain
        """
        at_s = None if at is None else to_epoch_seconds(at)
        user = int(self.vocabs.users.index_of([user_id])[0])
        return self._as_items(user_id, self.rank_indices(user, at_s, k, exclude_purchased, explain=explain), explain)

    def recommend_items_many(
        self, user_ids: Sequence, k: int = 10, at: Optional[Sequence] = None, exclude_purchased: bool = False
    ) -> List[Dict]:
        """:meth:`recommend_items` for many users, each at its own moment ``at[i]`` (default:
        the data end), in one model call (:meth:`rank_many`); no explanations."""
        at_s = [self.data_end] * len(user_ids) if at is None else [to_epoch_seconds(a) for a in at]
        rankings = self.rank_many(self.vocabs.users.index_of(list(user_ids)), at_s, k, exclude_purchased)
        return [self._as_items(u, r, explain=False) for u, r in zip(user_ids, rankings)]

    def _as_items(self, user_id, ranking: Ranking, explain: bool) -> Dict:
        raw = self.vocabs.products.raw_of(ranking.products)
        items = [{"product_id": p, "score": float(s)} for p, s in zip(raw, ranking.scores)]
        if explain:
            for item, because in zip(items, ranking.explanations or [[] for _ in items]):
                products = self.vocabs.products.raw_of([p for p, _ in because])
                item["because"] = [{"product_id": p, "weight": w} for p, (_, w) in zip(products, because)]
        return {"user_id": user_id, "cold_start": ranking.cold_start, "items": items}

    def score(self, user_id, product_ids: Sequence, at=None) -> List[float]:
        """Probabilities that the user buys each product at ``at``.

        Raises:
            KeyError: naming the product ids that are not in the catalog.
        """
        products = self.vocabs.products.index_of(list(product_ids))
        unknown = [p for p, i in zip(product_ids, products) if i == UNKNOWN_INDEX]
        if unknown:
            raise KeyError(f"unknown product ids: {unknown}")
        user = int(self.vocabs.users.index_of([user_id])[0])
        at_s = self.data_end if at is None else to_epoch_seconds(at)
        probs, _, _ = self.score_indices(user, products, at_s)
        return probs.astype(float).tolist()


def _top_history(history: np.ndarray, weights: np.ndarray, top: int) -> List[tuple]:
    present = np.flatnonzero(history > 0)
    best = present[np.argsort(-weights[present], kind="stable")][:top]
    return [(int(history[i]), float(weights[i])) for i in best]
