"""``tifu_knn``: TIFU-KNN (Hu, He, Gao, Zhang, "Modeling Personalized Item Frequency Information
for Next-basket Recommendation", SIGIR 2020).

The formulas follow the authors' reference code, github.com/HaojiHu/TIFUKNN, ``TIFUKNN.py``
(``temporal_decay_sum_history``, ``group_history_list``, ``merge_history``), where it and
the paper differ:

* a basket is a multi-hot vector over products (here: the distinct products of one
  household's purchases that share a timestamp);
* the household's n baskets, oldest first, each get the *within* decay over their position in
  the whole sequence: basket b (0-based) weighs ``within ** (n - 1 - b)`` (the paper decays
  within each group; the code over the whole sequence);
* the baskets are split, in order, into ``groups`` groups: with n >= groups, the first
  ``groups - n % groups`` groups hold ``n // groups`` baskets and the rest one more (the most
  recent groups are the larger ones); with n < groups every basket is its own group. Each
  group vector is the mean of its (decayed) basket vectors;
* group g (0-based, oldest first) weighs ``across ** (groups - 1 - g)``, and the sum is divided
  by the number of groups actually formed (``min(n, groups)``). With n < groups the code keeps
  the exponent ``groups - 1 - g``: the newest basket then weighs ``across ** (groups - n)``,
  not 1. Kept as in the reference, since the household's scale matters once it is blended;
* prediction = ``alpha * own + (1 - alpha) * mean(k nearest households' vectors)`` (a plain
  mean), top products by that score.

Where this differs from the reference on purpose: the reference searches neighbours among a
separate set of training users with scikit-learn's default Euclidean distance; here every
other household with purchases before the period is a candidate (never the household
itself) and the distance is cosine by default (``metric="euclidean"`` gives the reference's).
Ties (every product no one near bought included) go by popularity before the period; equally
similar households at the k-th place (households sharing no product with this one, where fewer
than k do) by a seeded shuffle of the households, not by index: household indices follow the
whole log's purchase counts, the held-out weeks' included.

Point in time: the neighbours' vectors are built from purchases strictly before the period
start (the ranker is built for a period); the household's own vector from its purchases
strictly before ``at``. In full ranking ``at`` is the household's first visit of the period,
so the two coincide and the neighbours found for the period-start vectors are reused.

Neighbour search is exact and on demand: a household's similarities to every other household
are one sparse row times the households' vectors (their norms and transpose computed once per
period), its k nearest kept for the period, the row dropped. Memory is one row of households
per question and k neighbours per household asked and setting, not a households x households
matrix (10M households would make that 800 TB); the time per question is the sparse product
(the households that share its products) plus one pass over every household's similarity.
At millions of households asked in batch one would reduce the vectors (a truncated SVD to a
few hundred dimensions) and use an approximate index (FAISS IVF/HNSW).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import scipy.sparse as sp

from ncf.evaluate.baselines.base import PointInTime, households_matrix, rank_with_ties, tie_scale

METRICS = ("cosine", "euclidean")


# The households whose neighbours a setting keeps: every one the tuning ranks (a sample of
# ncf.evaluate.evaluation.TUNE_MAX_USERS, 20,000), where alphas of one k share them; a period
# ranked in full past them, with one setting, finds the rest on demand (4M households x 300
# neighbours kept would be about 10 GB).
MEMO_HOUSEHOLDS = 50_000

# The neighbours' vectors are blended in a catalog-long vector when they hold at least
# 1/DENSE_BLEND of the catalog's products in all (their sum is then 5 times faster that way:
# 0.19 ms against 1.1 ms on Complete Journey, 45,000 entries of 100 neighbours among 68,000
# products), sparsely otherwise (1.8 ms against 3.2 ms a household at 1M products).
DENSE_BLEND = 4

# Memo entries of one vector setting (groups, within, across), kept for one setting at a time.
_PER_SETTING = ("tifu_vectors", "tifu_index", "tifu_neighbours")


def _of_another_setting(memo_key, vectors_key: tuple) -> bool:
    return isinstance(memo_key, tuple) and memo_key[0] in _PER_SETTING and memo_key[1:4] != vectors_key[1:]


def tifu_vectors(
    users: np.ndarray,
    products: np.ndarray,
    times: np.ndarray,
    shape: Tuple[int, int],
    groups: int,
    within: float,
    across: float,
) -> sp.csr_matrix:
    """Every household's TIFU vector (``shape`` = (users, products)) from its purchases
    (all the rows given: filter them by time first).

    Example (one household, baskets {1, 2} then {2}; groups=2, within=0.5, across=0.5)::

        tifu_vectors(np.array([0, 0, 0]), np.array([1, 2, 2]), np.array([10, 10, 20]), (1, 3), 2, 0.5, 0.5)
        # basket weights: first 0.5 (within) * 0.5 (across) / 2 groups, second 1 * 1 / 2
        # -> [[0, 0.125, 0.625]]
    """
    _check_vector_setting(groups, within, across)
    if len(users) == 0:
        return sp.csr_matrix(shape, dtype=np.float64)
    # Multi-hot baskets: one row per distinct (household, moment, product).
    order = np.lexsort((products, times, users))
    u, t, p = (np.asarray(a, np.int64)[order] for a in (users, times, products))
    distinct = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1]) | (p[1:] != p[:-1])]
    u, t, p = u[distinct], t[distinct], p[distinct]
    basket_starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])])
    basket_user = u[basket_starts]
    user_starts = np.flatnonzero(np.r_[True, basket_user[1:] != basket_user[:-1]])
    per_user = np.diff(np.r_[user_starts, len(basket_user)])
    n = np.repeat(per_user, per_user)  # baskets of the basket's household
    b = np.arange(len(basket_user)) - np.repeat(user_starts, per_user)  # position, oldest first
    weight = np.power(within, (n - 1 - b).astype(np.float64))

    few = n < groups  # every basket its own group
    base = np.maximum(n // groups, 1)
    cut = (groups - n % groups) * base  # baskets in the groups of size ``base``
    group = np.where(b < cut, b // base, (groups - n % groups) + (b - cut) // (base + 1))
    size = np.where(b < cut, base, base + 1)
    group = np.where(few, b, group)
    size = np.where(few, 1, size)
    formed = np.where(few, n, groups)
    weight = weight * np.power(across, (groups - 1 - group).astype(np.float64)) / size / formed

    basket_of_row = np.repeat(np.arange(len(basket_starts)), np.diff(np.r_[basket_starts, len(u)]))
    vectors = sp.coo_matrix((weight[basket_of_row], (u, p)), shape=shape).tocsr()
    vectors.sum_duplicates()
    return vectors


def _check_vector_setting(groups: int, within: float, across: float) -> None:
    if not (groups >= 1 and 0 < within <= 1 and 0 < across <= 1):
        raise ValueError(f"TIFU-KNN needs groups >= 1 and decays in (0, 1]: {groups}, {within}, {across}")


def period_vectors(context: PointInTime, groups: int, within: float, across: float) -> sp.csr_matrix:
    """Every household's vector from its purchases before ``context.start``: :func:`tifu_vectors`
    of them, built a chunk of households at a time (a household's purchases are all in one
    chunk, so each row is the whole log's to the bit). Memory grows with the distinct
    (household, product) pairs, not with every purchase: the whole log at once held three int64
    arrays of every purchase, the later ones too (about 80 GB at 1B), for each vector setting."""
    _check_vector_setting(groups, within, across)

    def vectors(users: np.ndarray, products: np.ndarray, times: np.ndarray) -> tuple:
        first = int(users[0])  # the chunk's households, in index order
        shape = (int(users[-1]) - first + 1, context.num_products)
        part = tifu_vectors(users - first, products, times, shape, groups, within, across).tocoo()
        return part.row.astype(np.int64) + first, part.col.astype(np.int64), part.data

    return households_matrix(context, vectors, np.float64)


def _row_norms(x: sp.csr_matrix) -> np.ndarray:
    """Rows: each row's L2 norm (one formula for households and questions, so that a question
    that is a household's own vector gets that household's norm to the bit)."""
    return np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())


class TifuKnnRanker:
    name = "tifu_knn"

    def __init__(
        self,
        context: PointInTime,
        groups: int = 14,
        within_decay: float = 0.9,
        across_decay: float = 0.9,
        alpha: float = 0.7,
        neighbours: int = 100,
        metric: str = "cosine",
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if not 0.0 <= alpha <= 1.0 or neighbours < 0:
            raise ValueError(f"TIFU-KNN needs alpha in [0, 1] and neighbours >= 0: {alpha}, {neighbours}")
        self.context = context
        self.groups, self.within, self.across = int(groups), float(within_decay), float(across_decay)
        self.alpha, self.k, self.metric = float(alpha), int(neighbours), metric
        self.params: Dict = {
            "groups": groups,
            "within_decay": within_decay,
            "across_decay": across_decay,
            "alpha": alpha,
            "neighbours": neighbours,
            "metric": metric,
        }
        self.vectors = self._period_vectors()

    @property
    def _blends(self) -> bool:
        return self.k > 0 and self.alpha < 1.0

    def _period_vectors(self) -> sp.csr_matrix:
        """Every household's vector at the period start (shared by rankers that differ only in
        alpha, k or metric)."""
        key = ("tifu_vectors", self.groups, self.within, self.across)
        if key not in self.context.memo:
            # One vector setting's matrices at a time: the tuning's 27 settings, each a households x
            # products matrix (about 17 GB together on 53.5M purchases), would all stay otherwise. A
            # setting met again (the best, for the neighbours' search) is computed again.
            for other in [k for k in self.context.memo if _of_another_setting(k, key)]:
                del self.context.memo[other]
            self.context.memo[key] = period_vectors(self.context, self.groups, self.within, self.across)
        return self.context.memo[key]

    def _index(self) -> Tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """The households' vectors transposed (products x households, for one row's products
        against every household), their L2 norms, and which households may be neighbours
        (purchases before the period): computed once per vector setting and shared."""
        key = ("tifu_index", self.groups, self.within, self.across)
        if key not in self.context.memo:
            x = self.vectors
            norms = _row_norms(x)
            candidate = np.zeros(x.shape[0], bool)
            candidate[self.context.households()] = True
            self.context.memo[key] = (x.T.tocsr(), norms, candidate)
        return self.context.memo[key]

    def _similarity_to(self, own: sp.csr_matrix) -> np.ndarray:
        """Households: the similarity of one vector (1 x products) to each household's (higher =
        nearer), -inf for households without purchases before the period."""
        transposed, norms, candidate = self._index()
        dots = np.asarray((own @ transposed).todense(), dtype=np.float64).ravel()
        own_norm = _row_norms(own)  # 1 element, not a scalar: squared as x * x, as the households' norms
        if self.metric == "cosine":
            sim = dots / np.maximum(own_norm * norms, 1e-300)
        else:  # minus the squared Euclidean distance
            sim = 2 * dots - own_norm**2 - norms**2
        sim[~candidate] = -np.inf
        return sim

    def _nearest(self, user: int, own: sp.csr_matrix) -> np.ndarray:
        """The k households most similar to ``own`` (never ``user`` itself, none at -inf; equally
        similar ones in a seeded shuffle's order), in index order."""
        sim = self._similarity_to(own)
        sim[user] = -np.inf
        # Equally similar households at the k-th place go by a fixed order, not by where a
        # partition's pivots fell; kept in index order, so that their vectors are always summed
        # in one order.
        return np.sort(rank_with_ties(sim, self._tie_order(), self.k))

    def _tie_order(self) -> np.ndarray:
        """Each household's place among equally similar ones: a seeded shuffle, since the index
        order follows purchases the held-out weeks hold (the most active in them first)."""
        shuffle = lambda: np.random.default_rng(0).permutation(self.context.num_users).astype(np.int32)  # noqa: E731
        return self.context.memoised(("household_shuffle", self.context.num_users), shuffle)

    def neighbours_of(self, user: int, own: sp.csr_matrix, at_start: bool) -> np.ndarray:
        """The household's k nearest households (indices), from its own vector; at the period
        start they are kept for the period (rankers that differ only in alpha share them), for
        the first :data:`MEMO_HOUSEHOLDS` households asked."""
        if not at_start:
            return self._nearest(user, own)
        key = ("tifu_neighbours", self.groups, self.within, self.across, self.metric, self.k)
        found = self.context.memo.setdefault(key, {})
        if user in found:
            return found[user]
        nearest = self._nearest(user, own).astype(np.int32)
        if len(found) < MEMO_HOUSEHOLDS:
            found[user] = nearest
        return nearest

    def personal(self, user: int, at: int) -> Tuple[sp.csr_matrix, bool]:
        """The household's own vector at ``at`` (1 x products) and whether it is its vector at
        the period start (no purchases between the start and ``at``)."""
        self.context.check(at)
        timeline = self.context.states.timeline(user)
        k_at, k_start = timeline.count_before(np.array([at, self.context.start]))
        if k_at == k_start:
            return self.vectors[user], True
        products, times = timeline.products[:k_at], timeline.timestamps[:k_at]
        shape = (1, self.context.num_products)
        users = np.zeros(len(products), np.int64)
        return tifu_vectors(users, products, times, shape, self.groups, self.within, self.across), False

    def predict(self, user: int, at: int) -> Tuple[np.ndarray, np.ndarray]:
        """alpha * own + (1 - alpha) * the neighbours' mean, at the products either holds
        (increasing indices; 0 at every other product)."""
        own, at_start = self.personal(user, at)
        neighbours = self.neighbours_of(user, own, at_start) if self._blends and own.nnz else ()
        if not len(neighbours):
            own = own * self.alpha
            own.sort_indices()
            return own.indices.astype(np.int64), own.data
        entries = int((self.vectors.indptr[neighbours + 1] - self.vectors.indptr[neighbours]).sum())
        if entries * DENSE_BLEND < self.context.num_products:
            return self._blend_sparse(own, neighbours)
        merged = self.alpha * own.toarray().ravel()
        merged += (1.0 - self.alpha) * (np.asarray(self.vectors[neighbours].sum(axis=0)).ravel() / len(neighbours))
        products = np.flatnonzero(merged)
        return products, merged[products]

    def _blend_sparse(self, own: sp.csr_matrix, neighbours: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`predict`'s blend without a catalog-long vector: the dense sum's values to the
        bit (each product's own part first, the neighbours' vectors added in their order)."""
        theirs = sp.csr_matrix(np.ones((1, len(neighbours)))) @ self.vectors[neighbours]
        # Divided, not multiplied by the reciprocal as scipy divides: the dense sum's bits.
        theirs.data = (1.0 - self.alpha) * (theirs.data / len(neighbours))
        theirs.sort_indices()
        merged = own * self.alpha + theirs
        merged.sort_indices()
        return merged.indices.astype(np.int64), merged.data

    def scores(self, user: int, at: int, products: np.ndarray) -> np.ndarray:
        bought, values = self.predict(user, at)
        return self.context.scores_sparse(bought, values, products, tie_scale(values))

    def rank(self, user: int, at: int, depth: int) -> np.ndarray:
        return self.context.rank_sparse(*self.predict(user, at), depth)
