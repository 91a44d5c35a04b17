"""Co-purchase neighbours: the k nearest products by cosine, a household's scores and best new
products from them, computed from the purchases before the cutoff only."""

import numpy as np
import pytest

from ncf.data.features import FEATURES, HALF_LIVES, Catalog, candidate_features
from ncf.data.neighbours import ProductNeighbours, SampledPairs
from ncf.data.product_stats import ProductStats
from ncf.data.timeline import UserTimeline
from ncf.data.user_state import UserStates, scrambled

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
    assert score[0] == np.float16(np.float32(np.log1p(1.0))) and score[1] == 0.0  # on the lists' float16 grid
    later = ProductStats.compute(states, category, cutoff=30 * DAY)
    assert later.neighbours.scores(np.array([5]), np.array([7]))[0] > 0.0


def test_a_fit_from_a_stats_pass_rows_equals_the_fit_from_purchases(purchases):
    """The stats pass hands the fit each household's distinct products as rows (no pairs sorted
    again); the same purchases as (household, product) pairs in any order give the same rows."""
    households, products = purchases
    pairs = np.unique(households * 40 + products)
    pairs = pairs[pairs % 40 > 0]
    indptr = np.r_[0, np.cumsum(np.unique(pairs // 40, return_counts=True)[1])]
    from_rows = ProductNeighbours.fit_rows(indptr, pairs % 40, 40, k=5)
    from_purchases = ProductNeighbours.fit(households[::-1], products[::-1], 40, k=5)
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(from_rows, name), getattr(from_purchases, name))


def _pairs_of(households, products, last_days):
    """Distinct (household, product) pairs sorted as a stats pass hands them over, each with its
    last day."""
    order = np.lexsort((-last_days, products, households))
    households, products, last_days = households[order], products[order], last_days[order]
    first = np.r_[True, (households[1:] != households[:-1]) | (products[1:] != products[:-1])]
    return households[first], products[first], last_days[first]


def test_the_sample_keeps_the_households_of_the_lowest_keys_within_the_work_whatever_the_chunks():
    rng = np.random.default_rng(2)
    drawn = rng.integers(0, 300, 6000), rng.integers(1, 50, 6000), rng.integers(0, 99, 6000)
    households, products, last_days = _pairs_of(*drawn)
    counts = np.bincount(households)
    everything = SampledPairs(max_products=50, max_work=int(np.dot(counts, counts)))
    everything.add(households, products, last_days)
    indptr, kept = everything.rows()
    assert everything.households_kept == everything.households_seen == 300
    np.testing.assert_array_equal(kept, products)

    max_work = np.dot(counts, counts) // 4
    by_key = np.argsort(scrambled(np.arange(300)))
    expected = np.sort(by_key[np.cumsum(counts[by_key] ** 2) <= max_work])
    for chunk_starts in ([0], [0, 37, 80, 81, 200, 299]):  # whole households per chunk
        sample = SampledPairs(max_products=50, max_work=max_work)
        for start, end in zip(chunk_starts, chunk_starts[1:] + [300]):
            rows = (households >= start) & (households < end)
            sample.add(households[rows], products[rows], last_days[rows])
        indptr, kept = sample.rows()
        assert sample.households_kept == len(expected) and 60 < len(expected) < 90
        np.testing.assert_array_equal(kept, products[np.isin(households, expected)])
        np.testing.assert_array_equal(np.diff(indptr), counts[expected])


def test_the_households_kept_do_not_depend_on_the_chunks():
    """Households of many sizes in random chunkings keep what one whole-log pass keeps (a cut once
    set its limit at the last household kept, so a small household after it was lost)."""
    rng = np.random.default_rng(3)
    for trial in range(40):
        sizes = rng.integers(1, 12, 60)
        households = np.repeat(np.arange(60), sizes)
        products = np.concatenate([np.arange(1, n + 1) for n in sizes])
        last_days = np.zeros(len(households), np.int64)
        max_work = int(rng.integers(50, 1500))
        whole = SampledPairs(max_products=20, max_work=max_work)
        whole.add(households, products, last_days)
        expected = whole.rows()
        cuts = np.sort(rng.choice(np.arange(1, 60), size=int(rng.integers(1, 10)), replace=False))
        chunked = SampledPairs(max_products=20, max_work=max_work)
        for start, end in zip(np.r_[0, cuts], np.r_[cuts, 60]):
            rows = (households >= start) & (households < end)
            chunked.add(households[rows], products[rows], last_days[rows])
        for a, b in zip(chunked.rows(), expected):
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}")


def test_the_sample_reads_each_household_with_its_latest_products():
    households, products, last_days = _pairs_of(
        np.repeat([3, 5], 3), np.array([4, 9, 6, 4, 9, 6]), np.array([5, 2, 5, 1, 8, 8])
    )
    for max_products, expected in ((3, [4, 6, 9, 4, 6, 9]), (2, [4, 6, 6, 9]), (1, [6, 9])):
        sample = SampledPairs(max_products=max_products)
        sample.add(households, products, last_days)  # ties on the last day to the higher index
        assert sample.rows()[1].tolist() == expected


def test_a_stats_pass_fits_its_neighbours_on_the_sample_only(capsys):
    """Household 1 buys 5 and 6, then 7 and 8 later: read with its latest two products only, 5
    and 6 are nobody's neighbours, 7 and 8 each other's; with everything, all four are near."""
    users = np.array([1, 1, 1, 1, 2, 2])
    products = np.array([5, 6, 7, 8, 7, 8])
    ts = np.array([0, 0, 3, 3, 4, 4]) * DAY
    states = UserStates.from_purchases(users, products, ts, 3)
    category = np.zeros(9, np.int64)
    latest_two = ProductStats.compute(states, category, 10 * DAY, neighbours_max_products=2)
    assert latest_two.neighbours.scores(np.array([5]), np.array([6, 7, 8])).tolist() == [0.0, 0.0, 0.0]
    assert latest_two.neighbours.scores(np.array([7]), np.array([8]))[0] == pytest.approx(1.0)
    everything = ProductStats.compute(states, category, 10 * DAY)
    assert (everything.neighbours.scores(np.array([5]), np.array([6, 7, 8])) > 0).all()
    np.testing.assert_array_equal(latest_two.lines, everything.lines)  # the other stats read every purchase
    assert "fitted on" not in capsys.readouterr().err
    ProductStats.compute(states, category, 10 * DAY, neighbours_max_work=16)  # works 16 and 4: one fits
    assert "neighbours at cutoff 864000: fitted on 1 of 2 households" in capsys.readouterr().err


def test_neighbours_fitted_on_a_share_of_the_households_find_the_same_tastes():
    """Four tastes of ten products, each household buying six of its taste's: fitted on about a
    quarter of the households (the sample's), every product's neighbours are still of its
    taste, as they are when fitted on all of them."""
    rng = np.random.default_rng(1)
    households = np.repeat(np.arange(400), 6)
    taste = households % 4
    products = 1 + taste * 10 + np.concatenate([np.sort(rng.choice(10, 6, replace=False)) for _ in range(400)])
    for max_work in (400 * 36, 100 * 36):
        sample = SampledPairs(max_products=6, max_work=max_work)
        sample.add(households, products, np.zeros(len(products), np.int64))
        neighbours = ProductNeighbours.fit_rows(*sample.rows(), 41, k=5)
        near = _dense(neighbours)[1:, 1:] > 0
        same_taste = np.arange(40)[:, None] // 10 == np.arange(40)[None, :] // 10
        assert sample.households_kept == max_work // 36
        assert near.sum() == 5 * 40 and (near & same_taste).sum() == near.sum()
