"""What every baseline shares: the ranker interface, what it may know, and ranking with ties.

A baseline is built for a period starting at ``start`` from a :class:`PointInTime` (the
catalog, the households and the popularity before ``start``) and then ranks a household at a
moment ``at >= start`` from purchases strictly before ``at``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, Optional, Protocol

import numpy as np
import scipy.sparse as sp

from ncf.data.catalog import catalog_before, households_before, popularity_before
from ncf.data.user_state import UserStates
from ncf.data.vocab import UNKNOWN_INDEX, Vocabularies


def log(message: str) -> None:
    """A line of ``jobs.evaluate``'s progress, on stderr: its stdout is one JSON line per model."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


class Ranker(Protocol):
    name: str
    params: Dict

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        """Scores of ``products`` (indices; higher is better, -inf outside the catalog), for the
        sampled protocol: their order is the ranking's, ties by popularity."""

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        """The ``depth`` best product indices, best first, all within the catalog."""


@dataclass
class PointInTime:
    """What a baseline may know when it ranks a period that starts at ``start``.

    ``memo`` keeps what several parameter settings share (e.g. TIFU-KNN's vectors while its
    neighbours and alpha are tuned); it lives as long as this object, or, within
    :meth:`one_baseline`, until that baseline is done. Its entries are of this moment: a copy of
    the context for another ``start`` must not share it.
    """

    states: UserStates
    start: int
    num_users: int
    catalog: np.ndarray  # bool per product index: rankable at ``start``
    memo: Dict = field(default_factory=dict, repr=False)
    data: Optional[str] = None  # the DATA directory (baselines that train on its lists)
    # Whether the rankings leave out what the household bought before the moment (the
    # evaluation's exclude_purchased): rankers of their own candidates draw them from what is left.
    exclude_purchased: bool = False
    # DATA's ranking state these ``states`` come from (:meth:`of_state`), for rankers that need
    # its products' stats (the boosted ranker): not loaded from disk again (about 110 s and 5-6
    # GiB at 10M households).
    ranking: Optional[object] = field(default=None, repr=False)

    @staticmethod
    def build(
        states: UserStates,
        vocabs: Vocabularies,
        start: int,
        data: Optional[str] = None,
        exclude_purchased: bool = False,
    ) -> "PointInTime":
        return PointInTime(
            states,
            int(start),
            len(vocabs.users),
            catalog_before(vocabs, start),
            data=data,
            exclude_purchased=exclude_purchased,
        )

    @staticmethod
    def of_state(state, start: int, data: Optional[str] = None, exclude_purchased: bool = False) -> "PointInTime":
        """:meth:`build` from a :class:`ncf.rank.state.RankingState` (DATA's), kept as ``ranking``."""
        context = PointInTime.build(state.states, state.vocabs, start, data, exclude_purchased)
        context.ranking = state
        return context

    @contextmanager
    def one_baseline(self) -> Iterator["PointInTime"]:
        """The context for one baseline's rankers: what they add to the memo (the boosted
        ranker's training rows, up to 1.3 GB; TIFU-KNN's vectors) is dropped when the block
        ends, so that it does not stay through the other baselines' work. The moment's own
        entries, popularity and the households (keyed by name, where a ranker's are tuples,
        :meth:`memoised`), stay for them."""
        before = set(self.memo)
        try:
            yield self
        finally:
            for key in set(self.memo) - before:
                if isinstance(key, tuple):
                    del self.memo[key]

    def memoised(self, key: tuple, compute: Callable):
        """``compute()``, kept in the memo under ``key`` (its kind first, then everything the
        value depends on) for the other rankers built on this context (its mode's too: ``in_mode``
        shares the memo). One value of a kind at a time: another seed's or mode's value replaces
        the last one rather than hold a second copy."""
        if key not in self.memo:
            for other in [k for k in self.memo if isinstance(k, tuple) and k[:1] == key[:1]]:
                del self.memo[other]
            self.memo[key] = compute()
        return self.memo[key]

    def in_mode(self, exclude_purchased: bool) -> "PointInTime":
        """This moment for rankings that do (or do not) leave out what was bought: the rankers
        of their own candidates (the boosted ranker) draw them for that mode."""
        if self.exclude_purchased == exclude_purchased:
            return self
        return replace(self, exclude_purchased=exclude_purchased)

    @property
    def num_products(self) -> int:
        return len(self.catalog)

    @property
    def popularity(self) -> np.ndarray:
        """Purchases per product index before ``start``: a pass over every purchase, taken on
        first use, so that ranking the model alone (validation, ``baselines=()``) never pays it."""
        if "popularity" not in self.memo:
            self.memo["popularity"] = popularity_before(self.states, self.start, self.num_products)
        return self.memo["popularity"]

    def households(self) -> np.ndarray:
        if "households" not in self.memo:
            self.memo["households"] = households_before(self.states, self.start)
        return self.memo["households"]

    def popularity_rank(self) -> np.ndarray:
        """Position of every product in the popularity order (most bought first, ties by index)."""
        if "popularity_rank" not in self.memo:
            order = np.argsort(-self.popularity, kind="stable")
            position = np.empty(len(order), np.int64)
            position[order] = np.arange(len(order))
            self.memo["popularity_rank"] = position
        return self.memo["popularity_rank"]

    def check(self, at: int) -> None:
        """Rankers built for a period see data up to its start: ranking an earlier moment
        would read the future of that moment (neighbours, popularity, fitted factors)."""
        if at < self.start:
            raise ValueError(f"a ranker built for the period starting at {self.start} cannot rank {at}")

    def masked(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` as float64 with -inf outside the catalog and at NaN (a copy): a NaN compares
        false with everything, so it would neither rank nor lose a sampled comparison."""
        out = np.asarray(scores, dtype=np.float64).copy()
        out[~self.catalog | np.isnan(out)] = -np.inf
        return out

    def by_popularity(self) -> np.ndarray:
        """Catalog products, most bought first (ties by index)."""
        if "by_popularity" not in self.memo:
            order = np.argsort(self.popularity_rank(), kind="stable")
            self.memo["by_popularity"] = order[self.catalog[order]]
        return self.memo["by_popularity"]

    def rank(self, scores: np.ndarray, depth: int) -> np.ndarray:
        """The best ``depth`` catalog products by score, ties by popularity: exactly, whatever
        the scale of the scores.

        Scores that are never negative (counts, decayed counts, TIFU vectors) rank their
        positive entries and fill up with the most popular of the rest, without sorting the
        whole catalog's zeros (most of it)."""
        scores = np.asarray(scores, dtype=np.float64)
        if not (scores >= 0).all():  # a NaN's min is NaN, never below 0: it would go the sparse way
            return rank_with_ties(self.masked(scores), self.popularity_rank(), depth)
        return self.rank_sparse(np.arange(len(scores)), scores, depth)

    def rank_sparse(self, products: np.ndarray, values: np.ndarray, depth: int) -> np.ndarray:
        """:meth:`rank` of the scores that are ``values`` at ``products`` (distinct indices, in
        increasing order) and 0 at every other product: the same list, in the time of the
        household's own products rather than the catalog's (3 ms a household at 1M products)."""
        keep = (values > 0) & self.catalog[products]
        support = products[keep]
        top = support[rank_with_ties(values[keep], self.popularity_rank()[support], depth)]
        if len(top) < depth:  # every positive product is in: the most popular of the rest follow
            popular = self.by_popularity()[: depth + len(top)]
            top = np.concatenate([top, popular[~np.isin(popular, top)][: depth - len(top)]])
        return top

    def scores_sparse(self, products: np.ndarray, values: np.ndarray, asked: np.ndarray, scale: float) -> np.ndarray:
        """The scores at ``asked`` of ``values`` at ``products`` (as :meth:`rank_sparse`), 0
        elsewhere, with :func:`tie_prior` of ``scale`` added and -inf outside the catalog: the
        dense scores' entries at ``asked``, to the bit, without the catalog-long vector."""
        asked = np.asarray(asked, np.int64)
        found = np.searchsorted(products, asked)
        bought = found < len(products)
        bought[bought] = products[found[bought]] == asked[bought]
        personal = np.zeros(len(asked))
        personal[bought] = values[found[bought]]
        out = personal + tie_prior(self.popularity_rank()[asked], len(self.popularity), scale)
        out[~self.catalog[asked]] = -np.inf
        return out


# One chunk of households' purchases (households, products, moments) -> its (rows, columns,
# values) in the households x products matrix.
ChunkEntries = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple]


def households_matrix(context: PointInTime, entries: ChunkEntries, dtype) -> sp.csr_matrix:
    """Households x products (``dtype``) from the purchases before ``context.start``, built a
    chunk of households at a time (each household's purchases whole in one chunk): memory grows
    with the matrix's entries, not with every purchase."""
    rows, columns, values = [], [], []
    for users, products, times in context.states.chunks(before=context.start):
        if len(users):
            row, column, value = entries(users, products, times)
            rows.append(row)
            columns.append(column)
            values.append(value)
    shape = (context.num_users, context.num_products)
    if not rows:
        return sp.csr_matrix(shape, dtype=dtype)
    joined = [np.concatenate(part) for part in (rows, columns, values)]
    return sp.coo_matrix((joined[2].astype(dtype, copy=False), (joined[0], joined[1])), shape=shape).tocsr()


def rank_with_ties(scores: np.ndarray, tie_rank: Optional[np.ndarray], depth: int) -> np.ndarray:
    """Indices of the ``depth`` highest finite scores, best first, equal scores by ``tie_rank``
    (lower first; None: by index, with no array of them to build); a NaN ranks as -inf (nowhere).

    Example::

        rank_with_ties(np.array([-np.inf, 1.0, 2.0, 1.0]), np.array([0, 2, 3, 1]), 2)  # [2, 3]
    """
    nan = np.isnan(scores)
    if nan.any():  # np.partition puts NaN last, above every score: the list came back short
        scores = np.where(nan, -np.inf, scores)
    finite = np.isfinite(scores)
    depth = min(depth, int(finite.sum()))
    if depth <= 0:
        return np.zeros(0, np.int64)
    threshold = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    above = np.flatnonzero(scores > threshold)
    tied = np.flatnonzero(scores == threshold)  # in index order
    if tie_rank is not None:
        tied = tied[np.argsort(tie_rank[tied], kind="stable")]
    chosen = np.concatenate([above, tied[: depth - len(above)]])
    return chosen[np.lexsort((chosen if tie_rank is None else tie_rank[chosen], -scores[chosen]))]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, never the unknown product."""
    scores = scores.astype(np.float64, copy=True)
    scores[UNKNOWN_INDEX] = -np.inf
    k = min(k, len(scores) - 1)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def tie_scale(personal: np.ndarray) -> float:
    """The scale of the :func:`tie_prior` added to ``personal`` scores (the household's
    non-zero ones are enough): half the smallest gap between two of their distinct values, zero
    included, so that products keep the order :func:`rank_with_ties` gives them, equal scores
    go the popular way, and a product scored above zero stays above every product at zero
    however small its score (one purchase 440 days ago at a 14-day half-life is 3.5e-10, under
    a fixed prior of 1e-9)."""
    levels = np.unique(np.concatenate([[0.0], personal[personal > 0]]))
    return 0.5 * float(np.diff(levels).min()) if len(levels) > 1 else 1.0


def tie_prior(place: np.ndarray, num_products: int, scale: float = 1.0) -> np.ndarray:
    """A term in (0, scale / 2] that falls with each product's ``place`` in the popularity order
    (:meth:`PointInTime.popularity_rank`, of ``num_products``): added to scores for protocols that
    read scores rather than rankings (the sampled one), so that ties there go exactly as the
    ranking breaks them, equally popular products by index (popularity's counts themselves tied
    them, and the sampled protocol counted such a tie against the positive)."""
    return 0.5 * scale * (1.0 - np.asarray(place, np.float64) / num_products)
