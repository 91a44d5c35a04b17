"""Co-purchase neighbours: the k nearest products by cosine, a household's scores and best new
products from them, computed from the purchases before the cutoff only."""

import numpy as np
import pytest

from ncf.data.features import FEATURES, HALF_LIVES, Catalog, candidate_features
from ncf.data.neighbours import ProductNeighbours
from ncf.data.product_stats import ProductStats
from ncf.data.timeline import UserTimeline
from ncf.data.user_state import UserStates

DAY = 86_400


def _cosines(households, products, num_products):
    bought = np.zeros((households.max() + 1, num_products))
    bought[households, products] = 1.0
    co = bought.T @ bought
    norm = np.sqrt(np.diag(co))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.nan_to_num(co / np.outer(norm, norm))
    np.fill_diagonal(cosine, 0.0)
    cosine[0] = cosine[:, 0] = 0.0  # the unknown product has no neighbours
    return cosine


def _dense(neighbours: ProductNeighbours) -> np.ndarray:
    out = np.zeros((neighbours.num_products, neighbours.num_products))
    for product in range(neighbours.num_products):
        row = slice(neighbours.indptr[product], neighbours.indptr[product + 1])
        out[product, neighbours.indices[row]] = neighbours.weights[row]
    return out


@pytest.fixture(scope="module")
def purchases():
    rng = np.random.default_rng(0)
    households, products = rng.integers(0, 60, 1500), rng.integers(0, 40, 1500)
    products[households % 2 == 0] %= 20  # two tastes: products 0-19 and 20-39 (and 0-19)
    return households, products


def test_each_product_keeps_its_k_nearest_by_cosine(purchases):
    households, products = purchases
    k = 5
    neighbours = ProductNeighbours.fit(households, products, 40, k=k)
    cosine, kept = _cosines(households, products, 40), _dense(neighbours)
    for product in range(1, 40):
        row = kept[product]
        assert (row > 0).sum() == k and row[product] == 0.0
        np.testing.assert_allclose(row[row > 0], cosine[product, row > 0], rtol=1e-5)
        # nothing left out is nearer than what was kept
        assert cosine[product, row == 0].max() <= row[row > 0].min() + 1e-6
    assert not kept[0].any() and not kept[:, 0].any()


def test_ties_keep_k_neighbours():
    """Products 1-6 bought by one household only: every cosine is 1, and each row keeps exactly k
    others (the library's k + 1 among the ties need not include the product itself)."""
    neighbours = ProductNeighbours.fit(np.zeros(6, np.int64), np.arange(1, 7), 7, k=2)
    rows = [neighbours.indices[neighbours.indptr[p] : neighbours.indptr[p + 1]].tolist() for p in range(7)]
    assert rows[0] == [] and all(len(row) == 2 and p not in row for p, row in enumerate(rows) if p)
    assert neighbours.weights.tolist() == pytest.approx([1.0] * 12)


def test_scores_and_best_sum_the_households_products_rows(purchases):
    households, products = purchases
    neighbours = ProductNeighbours.fit(households, products, 40, k=5)
    dense = _dense(neighbours)
    own = np.array([3, 7, 7, 25])  # repeats count once
    expected = dense[[3, 7, 25]].sum(axis=0)
    candidates = np.array([1, 39, 3, 1, 12])
    np.testing.assert_allclose(neighbours.scores(own, candidates), expected[candidates], rtol=1e-6)
    best = neighbours.best(own, 6)
    assert not np.isin(best, own).any() and len(best) == 6
    rest = np.setdiff1d(np.flatnonzero(expected > 0), np.r_[best, own])
    assert expected[best].min() >= expected[rest].max() - 1e-6
    assert np.all(np.diff(expected[best]) <= 1e-6)  # best first
    assert neighbours.scores(np.zeros(0, np.int64), candidates).tolist() == [0.0] * 5
    assert neighbours.best(np.zeros(0, np.int64), 3).tolist() == []


def test_a_households_sums_are_kept_on_its_aggregates_for_these_neighbours_only(purchases):
    """Given a household's Aggregates, best and scores share sums kept on them (the first stage
    and the features ask in turn); other neighbours (another cutoff's) compute their own."""
    households, products = purchases
    neighbours = ProductNeighbours.fit(households, products, 40, k=5)
    other = ProductNeighbours.fit(households[: len(households) // 2], products[: len(households) // 2], 40, k=5)
    candidates = np.arange(40)
    timeline = UserTimeline(np.array([3, 7, 7, 25]), np.array([0, DAY, 2 * DAY, 3 * DAY]))
    own = timeline.aggregates(4 * DAY, HALF_LIVES)
    for near in (neighbours, other, neighbours):
        np.testing.assert_array_equal(near.scores(own, candidates), near.scores(np.array([3, 7, 25]), candidates))
        assert near.best(own, 4).tolist() == near.best(np.array([25, 3, 7]), 4).tolist()
    assert own.derived and timeline.aggregates(4 * DAY, HALF_LIVES) is own


def test_neighbours_save_load_and_refuse_another_catalog(purchases, tmp_path):
    neighbours = ProductNeighbours.fit(*purchases, 40, k=3)
    neighbours.save(str(tmp_path))
    loaded = ProductNeighbours.load(str(tmp_path), 40)
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(neighbours, name))
    with pytest.raises(ValueError, match="neighbours of 40 products, not 41"):
        ProductNeighbours.load(str(tmp_path), 41)
    path = str(tmp_path / "neighbours.npz")
    for broken in (
        {"indices": -neighbours.indices},  # a negative index would read another product
        {"indptr": neighbours.indptr[::-1].copy()},  # rows that end before they start
        {"weights": neighbours.weights[:-1]},
    ):
        np.savez(
            path,
            **{"indptr": neighbours.indptr, "indices": neighbours.indices, "weights": neighbours.weights, **broken},
        )
        with pytest.raises(ValueError, match="malformed rows"):
            ProductNeighbours.load(str(tmp_path), 40)


def test_the_neighbour_score_reads_only_purchases_before_the_cutoff():
    """Households 1 and 2 buy 5 with 6 before the cutoff, household 3 buys 5 with 7 after it:
    at the cutoff 6 is 5's neighbour and 7 is not (a label window must not teach the feature)."""
    users = np.array([1, 1, 2, 2, 3, 3])
    products = np.array([5, 6, 5, 6, 5, 7])
    ts = np.array([0, 0, 1, 1, 20, 20]) * DAY
    states = UserStates.from_purchases(users, products, ts, 4)
    category = np.zeros(8, np.int64)
    stats = ProductStats.compute(states, category, cutoff=10 * DAY)
    tl = UserTimeline(np.array([5]), np.array([2 * DAY]))
    x = candidate_features(tl, np.array([6, 7]), 10 * DAY, Catalog(category, category), stats)
    score = x[:, FEATURES.index("neighbour_score")]
    assert score[0] == pytest.approx(np.log1p(1.0)) and score[1] == 0.0
    later = ProductStats.compute(states, category, cutoff=30 * DAY)
    assert later.neighbours.scores(np.array([5]), np.array([7]))[0] > 0.0
